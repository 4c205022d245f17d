"""python manage.py server add|list|check|standby|remove: the servers pitrsite protects."""
from __future__ import annotations

import socket

from django.core.exceptions import ValidationError
from django.core.validators import validate_slug

from fleet import servers
from fleet.capture import ensure_slot
from fleet.checks import check_server, run_checks
from fleet.external import remove_server
from fleet.models import Compression, Server, ServerKind
from fleet.promoted import add_standby
from fleet.status import server_summary
from pitrsite.output import PitrCommand, non_negative


class Command(PitrCommand):
    help = "Add, list, check, give a standby to and remove the PostgreSQL servers pitrsite protects."

    json_help = None  # on the subcommands: `server list --json`, `server check NAME --json`

    def arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        add = sub.add_parser("add", help="protect an existing server, after checking what capture needs")
        add.add_argument("name")
        add.add_argument("--host", required=True)
        add.add_argument("--port", type=int, required=True)
        add.add_argument("--user", required=True, help="a superuser of the server")
        add.add_argument("--dbname", default="postgres")
        add.add_argument("--replication-user", default="", help="default: --user")
        add.add_argument("--passfile", default="", help="libpq password file covering both roles "
                                                        "(default: PGPASSFILE / PGPASSWORD of the environment)")
        add.add_argument("--slot", default="", help="capture slot (default: pitr_NAME)")
        add.add_argument("--restore-port", type=int, help="loopback port of its restore target (default: a free one)")
        add.add_argument("--queue", default="", help="Celery queue of the host holding its archive")
        add.add_argument("--compress", choices=Compression.values, default="",
                         help="its backups' compression (default: the installation's)")
        add.add_argument("--keep-backups", type=non_negative(int), help="retention: backups kept (default: "
                         "PITR_RETENTION_KEEP_BACKUPS)")
        add.add_argument("--retention-days", type=non_negative(float), help="retention: days of recovery window "
                         "kept (default: PITR_RETENTION_DAYS)")
        for action in ("list", "check", "remove"):
            p = sub.add_parser(action)
            if action != "list":
                p.add_argument("name")
            if action in ("list", "check"):
                p.add_argument("--json", action="store_true")
        standby = sub.add_parser("standby", help="a hot standby of a promoted server (restore --as-new-primary), "
                                                 "streaming through its own slot")
        standby.add_argument("name")
        standby.add_argument("--port", type=int, required=True, help="the standby's loopback port")
        standby.add_argument("--json", action="store_true")
        sub.choices["remove"].add_argument("--forget", action="store_true",
                                           help="also forget its catalog (backups, WAL rows, jobs); deletes no file")

    def run(self, *args, **opts):
        getattr(self, f"do_{opts['action']}")(opts)

    def do_add(self, opts) -> None:
        name = opts["name"]
        try:
            validate_slug(name)
        except ValidationError:
            self.out.fail(f"server name {name!r} is not a slug: use letters, digits, - and _")
        if Server.objects.filter(name=name).exists():
            self.out.fail(f"server {name} exists already: `python manage.py server check {name}`")
        server = Server(name=name, kind=ServerKind.EXTERNAL, host=opts["host"], port=opts["port"], user=opts["user"],
                        dbname=opts["dbname"], replication_user=opts["replication_user"], passfile=opts["passfile"],
                        slot_name=opts["slot"] or f"pitr_{name.replace('-', '_')}",
                        restore_port=opts["restore_port"] or free_port(), queue=opts["queue"] or "celery",
                        compression=opts["compress"], retention_keep_backups=opts["keep_backups"],
                        retention_days=opts["retention_days"])
        checks = run_checks(server, stop_at_failure=True)
        for check in checks:
            if not check.ok:
                self.out.fail(check.line)
            self.out.line(f"ok  {check.line}")
        from fleet.external import ExternalDriver

        driver = ExternalDriver(server)
        with driver.connect(dbname="postgres") as conn:
            slot = ensure_slot(conn, server.slot_name, driver.layout.archive)
        server.save()
        self.out.result({"server": name, "slot": slot, "restore_port": server.restore_port, "queue": server.queue},
                        f"server {name} added ({slot}; restore target on port {server.restore_port}, "
                        f"queue {server.queue}): `python manage.py fleet up` starts its capturer")

    def do_list(self, opts) -> None:
        rows = [server_summary(s) for s in Server.objects.order_by("name")]
        self.out.result(rows, [f"{row['name']:16} {row['kind']:8} {row['host']}:{row['port']}  capture "
                               f"{row['capture']}  restore target port {row['restore_port']}  queue {row['queue']}"
                               + (f"\n  ALERT {row['problem']}" if row["problem"] else "") for row in rows])

    def do_check(self, opts) -> None:
        server = servers.resolve(opts["name"])
        lines = [check.as_dict() for check in check_server(server)]
        self.out.result({"server": server.name, "checks": lines},
                        [f"{'ok ' if line['ok'] else 'FAIL'} {line['line']}" for line in lines])
        failed = [line for line in lines if not line["ok"]]
        if failed:
            self.out.fail(f"{server.name}: {len(failed)} check(s) failed")

    def do_standby(self, opts) -> None:
        server = servers.resolve(opts["name"])
        line = add_standby(server, opts["port"])
        self.out.result({"server": server.name, "standby_port": server.standby_port, "done": line},
                        f"{line}: `python manage.py server check {server.name}` shows its replication")

    def do_remove(self, opts) -> None:
        self.out.result(remove_server(servers.resolve(opts["name"]), forget=opts["forget"]))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
