"""python manage.py restore (--target-time T | --target-lsn L | --target-xid X | --target-name N
| --immediate | --latest) [--as-new-primary NAME --port P --restore-port R]"""
from __future__ import annotations

from django.conf import settings

from fleet import servers
from fleet.command import ServerCommand
from fleet.driver import get_driver
from pitrsite.errors import PitrError
from pitrsite.jobs import ConsoleReporter, JobReporter, JobState
from restores.engine import run_restore
from restores.serializers import restore_dict
from restores.service import queue_restore
from restores.targets import RestoreTarget


class Command(ServerCommand):
    help = "Restore the restore target to a moment and promote it; the primary is only read."
    json_help = "print the finished job as JSON"
    # Django's system checks (models, admin, URLconf) are static and run by `manage.py check` and the tests;
    # here they would load every view and cost each restore or backup 0.2 s before its job starts.
    requires_system_checks: list[str] = []

    def arguments(self, parser):
        parser.add_argument("--target-time", help="ISO 8601 with a time zone, e.g. 2026-11-27T14:03:27+00:00")
        parser.add_argument("--target-lsn", help="e.g. 0/16B3740")
        parser.add_argument("--target-xid", help="a committed transaction id")
        parser.add_argument("--target-name", help="a restore point made with pg_create_restore_point")
        parser.add_argument("--immediate", action="store_true", help="stop as soon as the backup is consistent")
        parser.add_argument("--latest", action="store_true", help="replay everything captured")
        parser.add_argument("--exclusive", action="store_true", help="stop just before the target (time, LSN, xid)")
        parser.add_argument("--timeline", help="recovery target timeline (default: the newest in the catalog)")
        parser.add_argument("--backup", type=int, help="use this backup id instead of the newest usable one")
        parser.add_argument("--as-new-primary", metavar="NAME",
                            help="disaster recovery: the restored copy becomes server NAME (a new primary, "
                                 "captured and backed up); this server is retired, its history kept")
        parser.add_argument("--port", type=int, help="with --as-new-primary: the new primary's port")
        parser.add_argument("--restore-port", type=int, help="with --as-new-primary: its restore target's port")

    def run(self, *args, **opts):
        target = RestoreTarget.from_options(
            time=opts["target_time"], lsn=opts["target_lsn"], xid=opts["target_xid"], name=opts["target_name"],
            immediate=opts["immediate"], latest=opts["latest"], exclusive=opts["exclusive"],
            timeline=opts["timeline"], backup_id=opts["backup"])
        if (opts["port"] or opts["restore_port"]) and not opts["as_new_primary"]:
            self.out.fail("--port and --restore-port go with --as-new-primary NAME")
        promote = None if not opts["as_new_primary"] else {
            "name": opts["as_new_primary"], "port": opts["port"], "restore_port": opts["restore_port"]}
        job = queue_restore(target, trigger="command", as_new_primary=promote)
        try:
            job = run_restore(job, ConsoleReporter(self.out.console, JobReporter(job)))
        except PitrError as exc:
            job.refresh_from_db()
            self.out.fail(str(exc), restore=restore_dict(job))
        if job.state == JobState.DONE and job.plan.get("new_primary"):
            name, port = job.plan["new_primary"], job.as_new_primary["port"]
            self.out.result(restore_dict(job), (
                f"restore #{job.pk} promoted at {job.promoted_at.isoformat()} on timeline {job.final_timeline}; "
                f"recovery ended at {job.final_lsn_text}; it is now server {name}, a primary on "
                f"{settings.PITR_HOST}:{port}, captured through its own slot and backed up as any server "
                f"(--server {name}); server {servers.current().name} is retired, its history kept"))
        elif job.state == JobState.DONE:
            self.out.result(restore_dict(job), (
                f"restore #{job.pk} promoted at {job.promoted_at.isoformat()} on timeline {job.final_timeline}; "
                f"recovery ended at {job.final_lsn_text} ({job.plan.get('stop_reason', '')}); "
                f"it listens on {settings.PITR_HOST}:{get_driver().layout.port('restore_target')}"))
        else:
            self.out.result(restore_dict(job), [])
