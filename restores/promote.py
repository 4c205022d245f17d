"""restore --as-new-primary: the verified copy becomes a server of its own (the disaster-recovery path).

Checked when the restore is queued, before anything is touched (a bad name or port is refused in one line);
done as the restore job's last step, once the copy is proved promoted at the moment asked for, so the
command and the dashboard's task share it. fleet/promoted.py moves the copy and runs it.
"""
from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_slug

from fleet import servers
from fleet.driver import FleetDriver
from fleet.layout import Layout
from fleet.models import Server, ServerKind
from fleet.promoted import new_primary_from_copy
from pitrsite import procs
from pitrsite.errors import PitrError, RestoreError, StepFailed, first_line
from restores.models import RestoreJob

ROLE = "restore_target"


def new_primary_spec(name: str, port: int | None, restore_port: int | None, driver: FleetDriver) -> dict:
    """What --as-new-primary NAME --port P --restore-port R asks for, refused in one line when it cannot be."""
    try:
        validate_slug(name)
    except ValidationError:
        raise RestoreError(f"new server name {name!r} is not a slug: use letters, digits, - and _") from None
    if Server.objects.filter(name=name).exists():
        raise RestoreError(f"server {name} exists already: --as-new-primary needs a new name")
    home = Layout.of(Server(name=name, kind=ServerKind.PROMOTED)).home
    if home.exists():
        raise RestoreError(f"{home} exists already (an earlier server named {name}): move it aside or choose "
                           "another name")
    if not port or not restore_port:
        raise RestoreError("--as-new-primary needs --port (the new primary's) and --restore-port (its restore "
                           "target's)")
    ours = driver.layout.port(ROLE)
    for what, value in (("--port", port), ("--restore-port", restore_port)):
        if not 1024 <= value <= 65535:
            raise RestoreError(f"{what} {value} is not a port in 1024..65535")
        if value == ours:
            raise RestoreError(f"{what} {value} is the restore target's port of {servers.current().name}, which "
                               "stays its own (its history stays restorable): choose another")
        if procs.port_in_use(settings.PITR_HOST, value):
            raise RestoreError(f"{what} {value} is already in use by another process: choose a free port")
    if port == restore_port:
        raise RestoreError("--port and --restore-port must differ")
    return {"name": name, "port": port, "restore_port": restore_port}


def become_new_primary(job: RestoreJob, driver: FleetDriver) -> Server:
    """The promoted, verified copy in the restore target becomes server job.as_new_primary["name"]."""
    spec = job.as_new_primary
    driver.stop(ROLE)  # a clean shutdown: this copy is a primary from now on, not a scratch restore
    try:
        server = new_primary_from_copy(servers.current(), driver.layout, spec["name"], spec["port"],
                                       spec["restore_port"])
    except (OSError, PitrError) as exc:
        raise StepFailed("becoming a new primary", f"{first_line(exc)}; the copy stays in the restore "
                         "target, stopped") from None
    return server
