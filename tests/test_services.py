"""`manage.py services`: Redis, web, Celery worker and beat under the supervisor, for real.

Runs in its own data home on free ports with pitrsite.settings (not the suite's
tests.settings), as `scripts/pitr up` would, and SQLite under that home.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest

from pitrsite import procs
from tests.conftest import wait_for

PROJECT = Path(__file__).resolve().parent.parent
NAMES = ("redis", "web", "worker", "beat")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def services_env():
    if not shutil.which("redis-server"):
        pytest.fail("redis-server is not installed: apt-get install redis-server")
    home = Path(tempfile.mkdtemp(prefix="pitr-services-"))
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8",
        "DJANGO_SETTINGS_MODULE": "pitrsite.settings", "PYTHONPATH": str(PROJECT),
        "PITR_ENV_FILE": str(home / "no-such.env"), "PITR_HOME": str(home),
        "PITR_REDIS_PORT": str(free_port()), "PITR_WEB_PORT": str(free_port()),
        # No beat schedules: this test is about the processes, not the indexer.
        "PITR_INDEX_INTERVAL": "0", "PITR_REAP_INTERVAL": "0", "PITR_UPLOAD_INTERVAL": "0",
        "PITR_RETENTION_INTERVAL": "0",
        "PITR_PGADMIN": "false",  # the four processes; pgAdmin has its own test (tests/test_pgadmin.py)
    }
    yield env
    subprocess.run([sys.executable, str(PROJECT / "manage.py"), "services", "down"], env=env, cwd=PROJECT,
                   capture_output=True, timeout=120)
    shutil.rmtree(home, ignore_errors=True)


def manage(env: dict, *args: str) -> str:
    result = subprocess.run([sys.executable, str(PROJECT / "manage.py"), *args], env=env, cwd=PROJECT,
                            capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, (f"manage.py {' '.join(args)} exited {result.returncode}:\n"
                                    f"{result.stdout}\n{result.stderr}")
    return result.stdout


def status(env: dict) -> dict:
    return json.loads(manage(env, "services", "status", "--json"))["services"]


def test_services_up_restart_down(services_env):
    env = services_env
    manage(env, "migrate", "--noinput", "-v", "0")
    out = manage(env, "services", "up")
    for name in NAMES:
        assert f"{name} started" in out, out

    before = status(env)
    for name in NAMES:
        entry = before[name]
        assert entry["state"] == "running" and procs.alive(entry["pid"]), f"{name}: {entry}"
        assert entry["restarts"] == 0 and procs.alive(entry["supervisor_pid"]), f"{name}: {entry}"
    assert before["redis"]["port"] == int(env["PITR_REDIS_PORT"])

    import redis

    assert redis.Redis(host="127.0.0.1", port=int(env["PITR_REDIS_PORT"])).ping()
    with urllib.request.urlopen(f"http://127.0.0.1:{env['PITR_WEB_PORT']}/admin/login/", timeout=10) as response:
        assert response.status == 200
        assert 'name="username"' in response.read().decode()

    # The chaos harness's move: SIGKILL the worker; its supervisor must start a new one.
    old_pid = before["worker"]["pid"]
    pidfile = Path(env["PITR_HOME"]) / "run" / "worker.pid"
    pool = wait_for(lambda: procs.descendants(old_pid), 30, "the worker's pool processes")
    os.kill(old_pid, signal.SIGKILL)
    # Poll the supervisor's pid file (cheap), then ask the command once (a manage.py start costs seconds).
    new_pid = wait_for(lambda: (lambda pid: pid if pid != old_pid and procs.alive(pid) else None)(
        procs.read_pid(pidfile)), 30, "the supervisor to restart the killed worker")
    after = status(env)["worker"]
    assert after["state"] == "running" and after["pid"] == new_pid
    assert after["restarts"] == 1 and procs.alive(after["pid"])
    assert "killed by signal 9" in after["last_exit"]["how"]
    assert not procs.alive(old_pid)
    # Its orphaned pool processes go with it: nothing of the dead worker keeps running a task.
    assert not [pid for pid in pool if procs.alive(pid)], "the killed worker's pool processes outlived it"
    log = (Path(env["PITR_HOME"]) / "logs" / "worker.log").read_text()
    assert "restart #1" in log

    assert "worker already running" in manage(env, "services", "up")  # idempotent: nothing new started
    assert procs.read_pid(pidfile) == after["pid"]

    out = manage(env, "services", "down")
    for name in NAMES:
        assert f"{name} stopped" in out, out
    for name, entry in status(env).items():
        assert entry["state"] == "stopped", f"{name}: {entry}"
    for name in NAMES:
        pid = after["pid"] if name == "worker" else before[name]["pid"]
        assert procs.wait_gone(pid, 10), f"{name} pid {pid} still alive after services down"
        assert procs.wait_gone(before[name]["supervisor_pid"], 10)
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", int(env["PITR_WEB_PORT"]))) != 0, "the web port still answers"

    # Down then straight up again (what `scripts/pitr down; scripts/pitr up` does): the ports are free again.
    out = manage(env, "services", "up")
    assert all(f"{name} started" in out for name in NAMES), out
    manage(env, "services", "down")
