"""Small display filters shared by the dashboard and the admin."""
from __future__ import annotations

from django import template

from walcatalog import walnames

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
