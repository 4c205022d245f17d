"""Small display filters shared by the dashboard and the admin."""
from __future__ import annotations

import re
from datetime import datetime

from django import template
from django.utils import timezone

from walcatalog import walnames
from dashboard.timefmt import display_time

register = template.Library()


@register.filter
def seconds(value) -> str:
    """3725 -> '1 h 2 min'; short and readable, never a raw float."""
    if value is None or value == "":
        return "—"
    value = float(value)
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 90:
        return f"{value:.1f} s" if value < 10 else f"{value:.0f} s"
    minutes = value / 60
    if minutes < 90:
        return f"{minutes:.0f} min"
    hours = minutes / 60
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} days"


@register.filter
def lsn(value) -> str:
    return walnames.format_lsn(int(value)) if value is not None and value != "" else "—"


@register.filter
def state_class(state: str) -> str:
    return f"state state-{state}"


def quantity(value, unit: str) -> str:
    if unit == "bytes":
        from django.template.defaultfilters import filesizeformat

        return str(filesizeformat(value))
    if unit == "seconds":
        return seconds(value)
    return f"{value}"


@register.filter
def progress_text(job: dict) -> str:
    """'8 s of 30 s', '2 of 5 moments', '1.2 MB of 4.0 MB': the current step's progress in its own unit."""
    total, unit = job.get("progress_total"), job.get("progress_unit", "bytes")
    if not total:
        return ""
    text = f"{quantity(job.get('progress_done') or 0, unit)} of {quantity(total, unit)}"
    return text + (f" {unit}" if unit not in ("bytes", "seconds") else "")


@register.filter
def when(value, precise: str = "") -> str:
    """The one time format of the dashboard: '2026-12-01 19:21:53 UTC' (the restore form accepts it back).

    Takes datetimes and ISO strings (job JSON, chaos events); `|when:"ms"` adds milliseconds.
    """
    if value in (None, ""):
        return "—"
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    if timezone.is_naive(value):
        value = timezone.make_aware(value, timezone.get_default_timezone())
    return display_time(value, precise=bool(precise))


@register.filter
def overall(job) -> float | None:
    """A job row's overall percent (dashboard/progress.py): the bar lists show, which only grows."""
    from dashboard import progress

    return progress.overall(job.kind, job.state, job.steps, job.current_step, job.progress_done,
                            job.progress_total)


@register.filter
def who(job) -> str:
    from dashboard import jobs

    return jobs.who(job)


@register.filter
def get(mapping: dict, key):
    return mapping.get(key, "") if mapping else ""


@register.filter
def log_tail(job) -> str:
    """The last lines of a job's log (pitrsite/joblog.py)."""
    from dashboard import jobs

    return "\n".join(jobs.log_tail(job))


ISO_TIME = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d+)?(?:[+-]\d\d:\d\d|Z)")


@register.filter
def times(text: str) -> str:
    """ISO timestamps inside a sentence (the catalog's and fleet's own lines) in the one displayed format."""
    def shown(match: re.Match) -> str:
        value = datetime.fromisoformat(match.group(0).replace("Z", "+00:00"))
        return display_time(value, precise="." in match.group(0))
    return ISO_TIME.sub(shown, str(text))
