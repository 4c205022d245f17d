"""The data generator: steady-rate random rows into test_data, stoppable, with a one-line summary."""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import pytest

from fleet.generate import generate
from pitrsite.errors import PitrError
from tests.conftest import PROJECT, manage, subprocess_env

pytestmark = [pytest.mark.fleet]


def count(primary) -> int:
    return primary.execute("SELECT count(*) FROM test_data").fetchone()[0]


def test_rows_arrive_at_the_requested_rate(fleet, primary):
    before = count(primary)
    result = generate(rate=200, duration=2.0)
    assert count(primary) - before == result.rows
    assert 1.9 <= result.seconds <= 3.0
    assert 300 <= result.rows <= 460, f"about 200 rows/s for 2 s, got {result}"
    assert result.transactions >= 10, "rows go in many small transactions, not one"
    payloads = primary.execute("SELECT payload FROM test_data ORDER BY id DESC LIMIT 50").fetchall()
    assert len({p for (p,) in payloads}) == 50, "payloads are random"


def test_stop_event_ends_an_unbounded_run(fleet):
    stop = threading.Event()
    results = []
    worker = threading.Thread(target=lambda: results.append(generate(rate=100, duration=None, stop=stop)))
    began = time.monotonic()
    worker.start()
    time.sleep(0.8)
    stop.set()
    worker.join(10)
    assert not worker.is_alive() and time.monotonic() - began < 3
    assert results[0].rows >= 40


@pytest.mark.parametrize("rate, duration, message", [(0, 1, "--rate"), (-5, 1, "--rate"), (10, -1, "--duration")])
def test_bad_arguments_are_one_line_errors(rate, duration, message):
    with pytest.raises(PitrError, match=message):
        generate(rate=rate, duration=duration)


def test_command_prints_a_summary_and_rejects_bad_input(fleet):
    out = manage("generate", "--rate", "50", "--duration", "1").stdout
    assert out.startswith("generated ") and "rows" in out and len(out.strip().splitlines()) == 1
    bad = manage("generate", "--rate", "0", check=False)
    assert bad.returncode != 0 and "--rate must be above 0" in bad.stderr and "Traceback" not in bad.stderr


def test_ctrl_c_ends_the_command_with_its_summary(fleet, primary):
    before = count(primary)
    proc = subprocess.Popen([sys.executable, str(PROJECT / "manage.py"), "generate", "--rate", "100"],
                            env=subprocess_env(), cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    # Ctrl-C once rows arrive: during Django's start-up it would interrupt an import, which is not this test.
    deadline = time.monotonic() + 60
    while count(primary) == before and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert count(primary) > before, "the generator wrote no row within 60 s"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert out.startswith("generated ") and "Traceback" not in err
