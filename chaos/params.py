"""Chaos run parameters: the one set of defaults (command, dashboard form and admin read them from here), and the
demo's gentler set beside it."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from pitrsite.errors import ChaosError

ACTIONS = ("capturer_restart", "capturer_kill", "primary_pause", "standby_pause", "indexer_kill")
# Opt-in (not in "all"): each costs a full restore while the writers run.
DAMAGE_ACTIONS = ("bitrot", "stray")
# Opt-in, and only on the fleet driver that has it (fleet.driver.DRIVER_ONLY_ACTIONS refuses it elsewhere).
DRIVER_ACTIONS = ("primary_restart",)
ACTION_HELP = {
    "capturer_restart": "graceful restart of pg_receivewal (SIGHUP to its supervisor)",
    "capturer_kill": "SIGKILL of pg_receivewal; its supervisor starts it again",
    "primary_pause": "SIGSTOP of the primary for a few seconds (a network partition), then SIGCONT",
    "standby_pause": "SIGSTOP of the standby for a few seconds (hot-standby desync), then SIGCONT",
    "indexer_kill": "SIGKILL of the Celery worker running the WAL indexer (beat when the run is inside the worker)",
    "primary_restart": "docker restart of the primary's container (docker driver): every client reconnects",
    "bitrot": "16 bytes flipped in a complete indexed segment (mtime kept); a latest restore must catch it; repaired",
    "stray": "a history file for a timeline that does not exist; a latest restore must catch it; removed",
}


# --- parameters ---------------------------------------------------------------------------
def _range(value, name: str) -> tuple[float, float]:
    if isinstance(value, str):
        parts = value.replace("–", "-").split("-")
        if len(parts) != 2:
            raise ChaosError(f"{name} {value!r} is not MIN-MAX seconds, e.g. 30-60")
        value = parts
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ChaosError(f"{name} {value!r} is not MIN-MAX seconds, e.g. 30-60") from None
    if not (0 < low <= high):
        raise ChaosError(f"{name} {low:g}-{high:g}: need 0 < MIN <= MAX")
    return low, high


def _actions(value) -> tuple[str, ...]:
    if value is None:
        return ACTIONS
    # "all", "" or an empty list mean every action (the dashboard's form sends [] for all); "none" means none.
    if isinstance(value, str):
        value = value.split(",")
    names = tuple(dict.fromkeys(v.strip().lower() for v in value if v.strip()))
    if names in ((), ("all",)):
        return ACTIONS
    if names == ("none",):
        return ()
    if "all" in names:  # "all,bitrot": every default action and the opt-in ones named
        names = tuple(dict.fromkeys(ACTIONS + tuple(n for n in names if n != "all")))
    unknown = [n for n in names if n not in ACTIONS + DAMAGE_ACTIONS + DRIVER_ACTIONS]
    if unknown:
        raise ChaosError(f"unknown chaos action {unknown[0]!r}: choose from "
                         f"{', '.join(ACTIONS + DAMAGE_ACTIONS + DRIVER_ACTIONS)}, all or none")
    return names


@dataclass(frozen=True)
class ChaosParams:
    writers: int = 5
    duration: float = 600.0  # seconds of writing with chaos
    interval: tuple[float, float] = (30.0, 60.0)  # seconds between actions
    restores: int = 20  # moments restored and verified
    actions: tuple[str, ...] = ACTIONS
    pause: tuple[float, float] = (2.0, 5.0)  # how long a paused server stays paused
    write_pause: float = 0.1  # mean seconds between one writer's commits
    statement_timeout: float = 1.0  # client-side deadline of one statement (shorter than a pause)
    recovery_timeout: float = 180.0  # an action must be recovered from within this
    seed: int | None = None
    # Self-test only: restore to T + offset but compare with the log at T. The run must then fail;
    # it proves the checks catch an inexact restore. Always 0 in a real run.
    restore_offset: float = 0.0

    @classmethod
    def from_dict(cls, data: dict | None) -> "ChaosParams":
        data = dict(data or {})
        unknown = set(data) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ChaosError(f"unknown chaos parameter {sorted(unknown)[0]!r}")
        defaults = cls()

        def number(name: str, low: float, high: float, kind=float):
            value = data.get(name, getattr(defaults, name))
            try:
                value = kind(value)
            except (TypeError, ValueError):
                raise ChaosError(f"{name} {value!r} is not a number") from None
            if not (low <= value <= high):
                raise ChaosError(f"{name} must be from {low:g} to {high:g}, got {value:g}")
            return value

        seed = data.get("seed")
        if seed not in (None, ""):
            try:
                seed = int(seed)
            except (TypeError, ValueError):
                raise ChaosError(f"seed {seed!r} is not a whole number") from None
        else:
            seed = None
        return cls(writers=number("writers", 1, 32, int), duration=number("duration", 5, 86400),
                   interval=_range(data.get("interval", defaults.interval), "interval"),
                   restores=number("restores", 1, 500, int), actions=_actions(data.get("actions")),
                   pause=_range(data.get("pause", defaults.pause), "pause"),
                   write_pause=number("write_pause", 0.0, 60.0),
                   statement_timeout=number("statement_timeout", 0.5, 60.0),
                   recovery_timeout=number("recovery_timeout", 10, 3600), seed=seed,
                   restore_offset=number("restore_offset", 0.0, 3600.0))

    def as_dict(self) -> dict:
        data = asdict(self)
        # No actions is stored as "none": an empty list reads back as all of them.
        data.update(interval=list(self.interval), pause=list(self.pause), actions=list(self.actions) or "none")
        return data



# `manage.py demo`: the same run, gently (3 writers for 20 s, one graceful capturer restart, 2 restores).
DEMO = ChaosParams(writers=3, duration=20.0, interval=(8.0, 12.0), restores=2, actions=("capturer_restart",),
                   write_pause=0.2)
