"""The command API: `scripts/pitr restore|backup` (pitrsite/client.py) hands its arguments to the warm web
service, which queues the job for the worker, instead of starting Python and Django for each command.

Token only (pitrsite/apitoken.py), no session or CSRF. The arguments go through the management command's own
parser and the same option -> job function (restores/cli.py, walcatalog/cli.py), so an error reads as
`manage.py restore` prints it; the job goes the dashboard's way (dashboard/actions.py: queue, then Celery).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import wraps
from typing import Any, Callable, cast

from django.core.management import load_command_class
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from fleet import servers
from pitrsite import apitoken
from pitrsite.errors import PitrError
from pitrsite.jobs import ACTIVE_STATES
from pitrsite.output import JsonErrorParser, to_json
from dashboard import actions


@dataclass(frozen=True)
class Spec:
    app: str  # where the management command lives
    start: Callable[[dict], Any]  # parsed options -> the queued job
    outcome: Callable[[Any], tuple[dict, list[str], str | None]]  # a finished job -> the command's last words


def _start_restore(opts: dict):
    from restores import cli

    target, promote = cli.request_of(opts)
    return actions.start_restore(target, trigger="command", as_new_primary=promote)


def _start_backup(opts: dict):
    from walcatalog import cli

    return actions.start_backup(cli.request_of(opts), trigger="command")  # type: ignore[arg-type]  # None: its own


def _restore_outcome(job):
    from restores import cli

    return cli.outcome(job)


def _backup_outcome(job):
    from walcatalog import cli

    return cli.outcome(job)


# A look at a job may wait (?wait=S&seen=N) until it ends or starts a step past the N the client has seen,
# so the client learns the end within WAIT_POLL of it instead of polling with requests of its own. The wait
# holds a gthread worker's thread, not a process (fleet/services.py).
WAIT_MAX = 10.0
WAIT_POLL = 0.01  # s between two reads of the row's state and steps: a small query
COMMANDS = {"restore": Spec("restores", _start_restore, _restore_outcome),
            "backup": Spec("walcatalog", _start_backup, _backup_outcome)}


class ArgvError(Exception):
    def __init__(self, document: dict, line: str):
        super().__init__(line)
        self.document, self.line = document, line


def parse(name: str, argv: list[str]) -> dict:
    """`manage.py NAME ARGV`'s options, by the command's own parser; ArgvError in its words."""
    parser = cast(JsonErrorParser, load_command_class(COMMANDS[name].app, name).create_parser("manage.py", name))

    def error(message: str):
        raise ArgvError(*parser.error_words(message))

    def exit(status: int = 0, message: str | None = None):  # --help, --version: the client runs those itself
        raise ArgvError(*parser.error_words(message or "this option is not served by the API"))

    parser.error, parser.exit = error, exit  # type: ignore[method-assign]
    return vars(parser.parse_args(argv))


def refused(code: int, error: str, exit: int, document: dict | None = None) -> JsonResponse:
    return JsonResponse({"error": error, "exit": exit, "document": document or {"error": error}}, status=code)


def token_only(view: Callable) -> Callable:
    """Bearer token or 401; CSRF is for cookies, and these endpoints take none."""
    @csrf_exempt
    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs):
        if not apitoken.accepted(request.headers.get("Authorization", "")):
            return refused(401, f"the API needs `Authorization: Bearer TOKEN` with the token in {apitoken.path()}",
                           1)
        return view(request, *args, **kwargs)
    return wrapper


@token_only
@require_POST
def command(request: HttpRequest, name: str) -> JsonResponse:
    """{"argv": [...]} -> 202 {"kind", "id"} of the queued job, or 400 with the command's one-line error."""
    if name not in COMMANDS:
        return refused(404, f"no command {name!r} here: choose one of {', '.join(COMMANDS)}", 2)
    try:
        argv = json.loads(request.body)["argv"]
        if not (isinstance(argv, list) and all(isinstance(a, str) for a in argv)):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        return refused(400, 'the body must be {"argv": ["--option", "value", ...]}', 2)
    try:
        opts = parse(name, argv)
    except ArgvError as exc:
        return refused(400, exc.line, 2, exc.document)
    try:
        with servers.using(servers.resolve(opts.pop("server", None))):
            job = COMMANDS[name].start(opts)
    except PitrError as exc:  # refused before anything was queued (a QueueError: the row reads failed)
        return refused(400, str(exc), 1)
    return JsonResponse({"kind": job.kind, "id": job.pk}, status=202)


def _job(kind: str, pk: int):
    from dashboard.jobs import job_model

    model = job_model(kind)
    if model is None or kind not in COMMANDS:
        raise Http404(f"no job kind {kind}")
    return get_object_or_404(model.all_servers.select_related("server"), pk=pk)  # type: ignore[attr-defined]


@token_only
@require_GET
def job(request: HttpRequest, kind: str, pk: int) -> HttpResponse:
    """The job's state and steps; once it ended, the command's document, lines and error (exit 0 or 1)."""
    row = _job(kind, pk)
    try:
        wait, seen = float(request.GET.get("wait", 0)), int(request.GET.get("seen", 0))
    except ValueError:
        return refused(400, "wait must be seconds and seen a number of steps", 1)
    if wait > 0 and _changed_within(row, seen, min(wait, WAIT_MAX)):
        row.refresh_from_db()
    data: dict = {"kind": kind, "id": row.pk, "state": row.state, "current_step": row.current_step,
                  "steps": row.steps, "active": row.is_active}
    if not row.is_active:
        with servers.using(row.server):
            document, lines, error = COMMANDS[kind].outcome(row)
        data.update(document=document, lines=lines, error=error, exit=0 if error is None else 1)
    return HttpResponse(to_json(data), content_type="application/json")  # the command's own JSON of the dict


def _changed_within(row, seen: int, wait: float) -> bool:
    """Wait until the job is no longer active or has more than `seen` steps, at most `wait` s."""
    rows = type(row)._base_manager.filter(pk=row.pk)
    deadline = time.monotonic() + wait
    state, steps = row.state, row.steps
    while state in ACTIVE_STATES and len(steps) <= seen:
        if time.monotonic() >= deadline:
            return False
        time.sleep(WAIT_POLL)
        state, steps = rows.values_list("state", "steps").get()
    return True


@token_only
@require_POST
def job_cancel(request: HttpRequest, kind: str, pk: int) -> JsonResponse:
    """Ctrl-C in the client: the job is cancelled as from the dashboard (pitrsite/cancel.py)."""
    row = _job(kind, pk)
    return JsonResponse({"cancelled": actions.cancel_job(row, "the command (Ctrl-C)")})
