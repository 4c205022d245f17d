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
