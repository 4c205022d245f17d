"""Restore targets as the user gives them: one of time, LSN, xid, restore point name, immediate, latest.

Parsing and validation only (one line per mistake); restores.planner turns a target into a plan.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pitrsite.errors import PlanError
from restores.models import TargetKind
from walcatalog import walnames

EXAMPLE_TIME = "2026-11-27T14:03:27+00:00"


@dataclass(frozen=True)
class RestoreTarget:
    kind: str
    value: str = ""
    exclusive: bool = False
    timeline: str = ""  # "" = the newest timeline in the catalog, or a number
    backup_id: int | None = None

    @classmethod
    def from_options(cls, *, time: str | None = None, lsn: str | None = None, xid: str | None = None,
                     name: str | None = None, immediate: bool = False, latest: bool = False,
                     exclusive: bool = False, timeline: str | None = None,
                     backup_id: int | None = None) -> "RestoreTarget":
        given = [(kind, value)
                 for kind, value in ((TargetKind.TIME, time), (TargetKind.LSN, lsn), (TargetKind.XID, xid),
                                     (TargetKind.NAME, name)) if value not in (None, "")]
        given += [(kind, "") for kind, flag in ((TargetKind.IMMEDIATE, immediate), (TargetKind.LATEST, latest)) if flag]
        if len(given) != 1:
            what = "two or more targets" if given else "no target"
            raise PlanError(f"{what} given: choose exactly one of --target-time, --target-lsn, --target-xid, "
                            "--target-name, --immediate, --latest")
        kind, value = given[0]
        target = cls(kind=kind, value=str(value).strip(), exclusive=exclusive, timeline=(timeline or "").strip(),
                     backup_id=backup_id)
        target.validate()
        return target

    def validate(self) -> None:
        if self.kind not in TargetKind.values:
            raise PlanError(f"unknown target kind {self.kind!r}: choose one of {', '.join(TargetKind.values)}")
        if self.exclusive and self.kind not in (TargetKind.TIME, TargetKind.LSN, TargetKind.XID):
            raise PlanError("--exclusive applies only to time, LSN and xid targets")
        if self.kind == TargetKind.TIME:
            _ = self.time  # the property raises PlanError on a bad value
        elif self.kind == TargetKind.LSN:
            _ = self.lsn  # the property raises PlanError on a bad value
        elif self.kind == TargetKind.XID:
            _ = self.xid  # the property raises PlanError on a bad value
        elif self.kind == TargetKind.NAME and not (0 < len(self.value) < 64):
            raise PlanError("restore point name must be 1 to 63 characters")
        if self.timeline and not (self.timeline.isdigit() and int(self.timeline) > 0):
            raise PlanError(f"timeline {self.timeline!r} is not a positive number")

    @property
    def time(self) -> datetime:
        try:
            value = datetime.fromisoformat(self.value)
        except ValueError:
            raise PlanError(f"target time {self.value!r} is not ISO 8601: use the form {EXAMPLE_TIME}") from None
        if value.tzinfo is None:
            raise PlanError(f"target time {self.value!r} has no time zone: add one, for example {EXAMPLE_TIME}")
        return value

    @property
    def lsn(self) -> int:
        try:
            return walnames.parse_lsn(self.value)
        except walnames.WalNameError as exc:
            raise PlanError(str(exc)) from None

    @property
    def xid(self) -> int:
        if not self.value.isdigit() or not (3 <= int(self.value) < 2 ** 32):
            raise PlanError(f"transaction id {self.value!r} is not a number from 3 to 4294967295")
        return int(self.value)
