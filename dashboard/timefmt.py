"""The dashboard's one time format, shown everywhere and accepted back by the restore form."""
from __future__ import annotations

from datetime import datetime, timezone as dt_timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.utils import timezone


def display_time(moment: datetime, precise: bool = False) -> str:
    """2026-12-01 19:21:53 UTC (the template filter `when`); precise adds milliseconds."""
    local = timezone.localtime(moment)
    millis = f".{local.microsecond // 1000:03d}" if precise else ""
    return f"{local:%Y-%m-%d %H:%M:%S}{millis} {local.tzname()}"


def _zone(name: str):
    if name.upper() in ("UTC", "GMT", "Z"):
        return dt_timezone.utc
    current = timezone.get_current_timezone()
    if name == timezone.localtime(timezone.now()).tzname():  # the abbreviation the pages print (CET, EST)
        return current
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def parse_moment(text: str) -> datetime | None:
    """ISO 8601 with an offset, or the displayed form 'YYYY-MM-DD HH:MM:SS[.ffffff] ZONE'; None without a zone."""
    text = text.strip()
    try:
        moment = datetime.fromisoformat(text)
        return moment if moment.tzinfo else None
    except ValueError:
        pass
    head, _, zone_name = text.rpartition(" ")
    zone = _zone(zone_name) if head else None
    if zone is None:
        return None
    try:
        moment = datetime.fromisoformat(head)
    except ValueError:
        return None
    return None if moment.tzinfo else moment.replace(tzinfo=zone)
