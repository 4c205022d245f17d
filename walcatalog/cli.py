"""`backup`'s options and its final words, shared by `manage.py backup` and the web API (dashboard/api.py)."""
from __future__ import annotations

from pitrsite.jobs import ENDED_BADLY, JobState
from walcatalog.models import DEFAULT_COMPRESSION, BaseBackup, Compression
from walcatalog.serializers import backup_dict


def arguments(parser) -> None:
    parser.add_argument("--compress", help=f"one of {', '.join(Compression.values)} (default: the server's own "
                                           f"compression, else {DEFAULT_COMPRESSION})")


def request_of(opts: dict) -> str | None:
    """Parsed options -> the compression (None: the server's own; queue_backup checks the name)."""
    return opts["compress"]


def outcome(backup: BaseBackup) -> tuple[dict, list[str], str | None]:
    """A finished backup as the command ends: (its JSON document, its lines, the one-line error or None)."""
    if backup.state in ENDED_BADLY:
        error = backup.error or f"backup {backup.label} {backup.state}"
        return {"error": error}, [], error
    data = backup_dict(backup)
    if backup.state != JobState.DONE:
        return data, [], None
    return data, [f"backup {backup.label} done: {backup.start_lsn_text}..{backup.stop_lsn_text} on timeline "
                  f"{backup.timeline}, {backup.size_stored:,} bytes stored, manifest verified"], None
