"""One exception tree: what a user can fix gets a one-line message, and its type says what kind it is."""
from __future__ import annotations


class PitrError(Exception):
    """An error whose message is the whole story for the user (no traceback)."""


class ConfigError(PitrError):
    pass


class FleetError(PitrError):
    pass


class LockBusy(PitrError):
    """Another job or pass holds the lock this one needs: nothing was started. Periodic tasks skip on it."""


class JobCancelled(PitrError):
    """A user cancelled the job: its row reads cancelled already; the code running it stops at its next report."""


class StepFailed(PitrError):
    """A job failed in one of its steps; the message reads `failure <step> (<reason>)`."""

    def __init__(self, step: str, reason: str):
        self.step, self.reason = step, reason
        super().__init__(f"failure {step} ({reason})")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
