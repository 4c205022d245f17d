"""Storage problems are one line (or one JSON error object), never a botocore or Azure traceback.

Real moto and Azurite servers; a wrong endpoint is a loopback port nothing listens on.
"""
from __future__ import annotations

import json

import pytest

from tests.storage_servers import AZURITE_ACCOUNT, AZURITE_KEY, azurite_server, free_port, moto_server  # noqa: F401
from tests.test_settings_errors import clean_env, home, one_line_error, run_manage  # noqa: F401


def s3_env(endpoint: str, bucket: str, key: str = "test") -> dict:
    return {"PITR_STORAGE_BACKEND": "s3", "PITR_STORAGE_S3_BUCKET": bucket, "PITR_STORAGE_S3_ENDPOINT_URL": endpoint,
            "PITR_STORAGE_S3_REGION": "us-east-1", "PITR_STORAGE_S3_ACCESS_KEY_ID": key,
            "PITR_STORAGE_S3_SECRET_ACCESS_KEY": "test", "PITR_STORAGE_RETRIES": "1"}


def azure_env(endpoint: str, container: str, key: str = AZURITE_KEY) -> dict:
    return {"PITR_STORAGE_BACKEND": "azure", "PITR_STORAGE_AZURE_CONTAINER": container,
            "PITR_STORAGE_AZURE_ACCOUNT_NAME": AZURITE_ACCOUNT, "PITR_STORAGE_AZURE_ACCOUNT_KEY": key,
            "PITR_STORAGE_AZURE_ENDPOINT": endpoint, "PITR_STORAGE_RETRIES": "1"}


def _cases(request) -> list[tuple[str, dict, str]]:
    moto, azurite = request.getfixturevalue("moto_server"), request.getfixturevalue("azurite_server")
    import boto3

    boto3.client("s3", endpoint_url=moto, region_name="us-east-1", aws_access_key_id="test",
                 aws_secret_access_key="test").create_bucket(Bucket="pitr-errors-held")
    dead = f"http://127.0.0.1:{free_port()}"
    return [
        ("s3 wrong endpoint", s3_env(dead, "pitr-errors-held"), "cannot reach the endpoint"),
        ("s3 missing bucket", s3_env(moto, "pitr-no-such-bucket"), "the bucket does not exist; create it first"),
        ("azure wrong endpoint", azure_env(f"{dead}/{AZURITE_ACCOUNT}", "c"), "cannot reach the endpoint"),
        ("azure missing container", azure_env(azurite, "pitr-no-such-container"),
         "the container does not exist; create it first"),
        ("azure bad key", azure_env(azurite, "pitr-no-such-container", key="AAAA" + AZURITE_KEY[4:]),
         "credentials refused"),
    ]


@pytest.mark.parametrize("command", [("storage", "check"), ("upload",)])
def test_storage_problems_are_one_line_and_a_json_error(home, request, command):  # noqa: F811
    base = clean_env(home)
    assert run_manage(base, "migrate", "-v0").returncode == 0
    for label, env, expected in _cases(request):
        full = {**base, **env}
        line = one_line_error(run_manage(full, *command))
        assert expected in line and line.startswith(f"CommandError: storage {env['PITR_STORAGE_BACKEND']}:"), \
            (label, line)
        result = run_manage(full, *command, "--json")
        assert result.returncode != 0, label
        error = json.loads(result.stdout)["error"]  # exactly one JSON document on stdout
        assert expected in error, (label, error)
        assert "Traceback" not in result.stderr, (label, result.stderr)


def test_an_unknown_server_is_a_json_error(home):  # noqa: F811
    """--server before or after a subcommand; an argument error (argparse's) is a JSON object on stdout too."""
    env = clean_env(home)
    assert run_manage(env, "migrate", "-v0").returncode == 0
    for argv in (("storage", "check", "--server", "nope"), ("restore", "--server", "nope", "--latest")):
        result = run_manage(env, *argv, "--json")
        assert result.returncode == 1, (argv, result.stdout, result.stderr)
        assert "unknown server 'nope'" in json.loads(result.stdout)["error"], argv
    result = run_manage(env, "backups", "--json", "--server")
    assert result.returncode == 2 and "expected one argument" in json.loads(result.stdout)["error"]
    for argv in (("backups", "--server"), ("restore", "--bogus"), ("server", "add", "x")):  # without --json too
        result = run_manage(env, *argv)
        assert result.returncode == 2 and result.stdout == "", (argv, result.stdout)
        assert len(result.stderr.strip().splitlines()) == 1, (argv, result.stderr)
        assert result.stderr.startswith(f"manage.py {' '.join(argv[:2 if argv[0] == 'server' else 1])}: error: ")
