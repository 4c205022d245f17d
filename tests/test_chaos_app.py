"""The chaos app's own pieces that need no fleet: the model's move out of restores, parameters in forms."""
from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor


@pytest.mark.django_db(transaction=True)
def test_chaos_runs_survive_the_move_to_the_chaos_app():
    """A database at main's migrations (ChaosRun in restores) keeps its rows when migrated forward."""
    executor = MigrationExecutor(connection)
    before = [("chaos", None), ("restores", "0003_restorejob_drill")]
    executor.migrate(before)
    executor.loader.build_graph()
    old_state = executor.loader.project_state(("restores", "0003_restorejob_drill"))
    old_model = old_state.apps.get_model("restores", "ChaosRun")
    pk = old_model.objects.create(summary="before the move", parameters={"writers": 2}).pk

    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())
    from chaos.models import ChaosRun

    run = ChaosRun.objects.get(pk=pk)
    assert run.summary == "before the move" and run.parameters == {"writers": 2}
    assert ChaosRun._meta.db_table == "restores_chaosrun"


@pytest.mark.parametrize("actions", [(), ("capturer_kill", "standby_pause")])
def test_run_again_keeps_every_parameter(actions):
    """The admin's 'Run again with the same parameters': the form, prefilled from a run, gives the same run back."""
    from chaos.params import ChaosParams
    from dashboard.forms import ChaosForm

    stored = ChaosParams(writers=3, duration=42, interval=(2.0, 4.0), restores=7, actions=actions, pause=(1.0, 1.5),
                         write_pause=0.3, statement_timeout=2.0, recovery_timeout=77, seed=9, restore_offset=1.0)
    initial = ChaosForm.initial_from(stored.as_dict())
    form = ChaosForm({k: "" if v is None else v for k, v in initial.items()})
    assert form.is_valid(), form.errors
    assert ChaosParams.from_dict(form.params()) == stored


def test_the_dashboard_form_starts_with_the_parameters_defaults():
    from chaos.params import ChaosParams
    from dashboard.forms import ChaosForm

    form, defaults = ChaosForm(), ChaosParams()
    assert form.fields["writers"].initial == defaults.writers
    assert form.fields["duration"].initial == defaults.duration
    assert form.fields["restores"].initial == defaults.restores


def test_the_commands_start_with_the_parameters_defaults():
    """`manage.py chaos` takes chaos.params' defaults; `manage.py demo` its gentler set (chaos.params.DEMO)."""
    from chaos.management.commands import chaos, demo
    from chaos.params import DEMO, ChaosParams

    parser, defaults = chaos.Command().create_parser("manage.py", "chaos"), ChaosParams()
    given = ChaosParams.from_dict({name: parser.get_default(name) for name in (
        "writers", "duration", "interval", "restores", "pause", "write_pause", "restore_offset")})
    assert given == defaults
    parser = demo.Command().create_parser("manage.py", "demo")
    assert (parser.get_default("duration"), parser.get_default("restores")) == (DEMO.duration, DEMO.restores)


def test_waiting_for_a_primary_that_refuses_connections_backs_off():
    """Issue 9: after an action the run asked a refusing primary for its LSN in a busy loop, for up to 180 s."""
    import socket

    from chaos.health import wait_primary_lsn

    with socket.socket() as sock:  # a loopback port nothing listens on: connections are refused at once
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    lsn, attempts = wait_primary_lsn(port, timeout=3.0)
    assert lsn is None
    assert 2 <= attempts <= 15, f"{attempts} connection attempts in 3 s"


def test_a_writer_reconnecting_to_a_refusing_primary_backs_off(monkeypatch, tmp_path):
    """Issue 9: the writers' reconnect loop must wait between attempts, not spin while the primary refuses."""
    import random
    import threading

    from chaos import writers
    from pitrsite.errors import FleetError

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(1)
        raise FleetError("connection refused")

    monkeypatch.setattr(writers.pg, "connect", refuse)
    stop = threading.Event()
    writer = writers.Writer(1, "chaos-test-backoff", tmp_path / "writes-1.jsonl", 1, stop, writers.Watchdog(),
                            mean_pause=0.0, statement_timeout=1.0, rng=random.Random(1))
    threading.Timer(1.2, stop.set).start()
    assert writer.ensure_connected() is False  # returns once stopped
    assert 2 <= len(attempts) <= 6, f"{len(attempts)} connection attempts in 1.2 s"
