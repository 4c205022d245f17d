"""The one process starter: own process group, dies with its parent, timeouts, the reaper's record."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from pitrsite import procs, runner


def test_a_failure_names_the_step_and_the_error_line():
    with pytest.raises(runner.ToolFailed) as caught:
        runner.run([sys.executable, "-c", "import sys; print('starting', file=sys.stderr);"
                    "print('tool: error: no such thing', file=sys.stderr); sys.exit(3)"], step="probing")
    assert str(caught.value) == "failure probing (tool: error: no such thing)"


def test_a_timeout_kills_the_whole_group():
    started = time.monotonic()
    with pytest.raises(runner.ToolFailed, match=r"failure sleeping \(timed out after 1 s\)"):
        # The shell's child sleep holds the pipe open: only killing the group ends the wait.
        runner.run(["sh", "-c", "sleep 30 & sleep 30"], step="sleeping", timeout=1)
    assert time.monotonic() - started < 10


def test_lines_go_to_the_handler_and_the_rest_is_kept():
    seen = []
    result = runner.run([sys.executable, "-c", "import sys\nfor i in range(3): print(f'{i}/3 kB', file=sys.stderr)\n"
                         "print('a warning', file=sys.stderr)"], step="x",
                        on_line=lambda line: seen.append(line.strip()) or "kB" in line)
    assert seen == ["0/3 kB", "1/3 kB", "2/3 kB", "a warning"]
    assert result.stderr == "a warning\n"


def test_a_tool_dies_with_the_process_that_started_it(tmp_path):
    pidfile = tmp_path / "child.pid"
    parent = subprocess.Popen([sys.executable, "-c", f"""
import django, os
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
from pitrsite import runner
proc = runner.popen(["sleep", "60"])
open({str(pidfile)!r}, "w").write(str(proc.pid))
proc.wait()
"""], cwd=os.getcwd())
    deadline = time.monotonic() + 20
    while not pidfile.exists() or not pidfile.read_text():
        assert time.monotonic() < deadline, "the parent never started its tool"
        time.sleep(0.05)
    child = int(pidfile.read_text())
    assert procs.alive(child) and os.getpgid(child) == child  # its own group
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    assert procs.wait_gone(child, 5), "the tool outlived the SIGKILLed process that started it"


def test_an_owners_groups_are_killed_by_the_reaper(settings, tmp_path):
    settings.PITR_HOME = str(tmp_path)
    proc = runner.popen(["sh", "-c", "sleep 60 & wait"], owner="BaseBackup-99")
    time.sleep(0.3)
    members = [pid for pid in procs.pids_in_groups({proc.pid})]
    assert len(members) >= 2  # the shell and its sleep
    assert runner.kill_children("BaseBackup-99") == len(members)
    proc.wait(5)
    assert all(procs.wait_gone(pid, 5) for pid in members)
    assert runner.kill_children("BaseBackup-99") == 0  # the record is gone with them


def test_a_tool_filling_stdout_while_its_stderr_is_followed_does_not_stall():
    # 1 MiB on stdout (a pipe holds 64 KiB) before the one stderr line the handler waits for.
    script = "import sys; sys.stdout.write('x' * (1 << 20)); sys.stdout.flush(); print('10/10 kB', file=sys.stderr)"
    result = runner.run([sys.executable, "-c", script], step="x", timeout=30, on_line=lambda line: "kB" in line)
    assert len(result.stdout) == 1 << 20
