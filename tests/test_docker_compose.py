"""The Compose files: `docker-compose config` accepts them, and they describe the seed's topology."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

PROJECT = Path(__file__).resolve().parent.parent
SEED = {"primary", "standby", "wal_capturer", "restore_target", "pgadmin", "redis"}
APP = {"web", "worker", "beat"}


def compose_config(*files: str) -> dict:
    binary = shutil.which("docker-compose")
    if not binary:
        pytest.fail("docker-compose is not installed: apt-get install docker-compose (scripts/pitr test installs it)")
    argv = [binary, *(arg for f in files for arg in ("-f", f)), "config"]
    result = subprocess.run(argv, capture_output=True, text=True, cwd=PROJECT, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "PITR_HOME": "/srv/pitr-compose-test"})
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_accepts_both_files_and_they_hold_the_seed_topology_plus_the_app():
    base = compose_config("docker-compose.yml")
    assert set(base["services"]) == SEED
    merged = compose_config("docker-compose.yml", "docker-compose.override.yml")
    assert set(merged["services"]) == SEED | APP
    for name, service in merged["services"].items():
        assert service["network_mode"] == "host", name  # the engine runs with --bridge=none
    for name in SEED:
        # each node has its own env file (config inlines it into the environment)
        lines = (PROJECT / "docker" / "env" / f"{name}.env").read_text().splitlines()
        wanted = dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
        environment = merged["services"][name]["environment"]
        assert wanted and {k: environment.get(k) for k in wanted} == wanted, name
        assert environment["PITR_HOME"] == "/srv/pitr-compose-test", name
    assert {"primary_data", "standby_data", "restore_data", "wal_archive", "backups"} <= set(merged["volumes"])
    for name, volume in merged["volumes"].items():
        assert volume["driver_opts"]["device"].startswith("/srv/pitr-compose-test/"), name
