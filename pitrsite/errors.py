"""One exception tree: what a user can fix gets a one-line message, and its type says what kind it is.

Every pitrsite error is a PitrError (commands print its message as one line, jobs store it); the
subclasses say where it came from, so callers catch what they can handle and nothing else.
"""
from __future__ import annotations


class PitrError(Exception):
    """An error whose message is the whole story for the user (no traceback)."""


class LockBusy(PitrError):
    """Another job or pass holds the lock this one needs: nothing was started. Periodic tasks skip on it."""


class JobCancelled(PitrError):
    """A user cancelled the job: its row reads cancelled already; the code running it stops at its next report."""


class StepFailed(PitrError):
    """A job failed in one of its steps; the message reads `failure <step> (<reason>)`."""

    def __init__(self, step: str, reason: str):
        self.step, self.reason = step, reason
        super().__init__(f"failure {step} ({reason})")


# --- the fleet: servers, tools, services -------------------------------------------------------
class FleetError(PitrError):
    pass


class ToolFailed(StepFailed, FleetError):
    """A tool (initdb, pg_ctl, pg_basebackup, tar, ...) exited non-zero, timed out or is missing."""


class ServiceError(PitrError):
    """Redis, web, worker or beat cannot be started or reached."""


class ServerError(PitrError):
    """No such protected server, or several and none named."""


class PgAdminError(PitrError):
    """pgAdmin cannot be set up or started."""


# --- the catalog: WAL, backups, storage ------------------------------------------------------------
class WalDumpError(PitrError):
    """pg_waldump printed something we do not understand."""


class OtherCluster(PitrError):
    """WAL whose system identifier is not the one the catalog knows for the server."""


class BackupError(PitrError):
    pass


class VerifyError(BackupError):
    """A backup's archives disagree with its manifest (or cannot be read to the end)."""


class StorageError(PitrError):
    pass


class ChecksumError(StorageError):
    """An object's bytes are not the bytes the catalog recorded."""


class LocalChanged(ChecksumError):
    """The local file is not what the catalog indexed: uploading it again will not help."""


class RebuildError(PitrError):
    pass


class RetentionError(PitrError):
    pass


# --- restores ----------------------------------------------------------------------------------------
class PlanError(PitrError):
    """The target cannot be restored from what the catalog holds (or is malformed)."""


class NotYetCaptured(PlanError):
    """The target lies after what the catalog holds: it may only not be indexed yet."""


class RestoreError(PitrError):
    pass


# --- the chaos harness and the dashboard -------------------------------------------------------------
class ChaosError(PitrError):
    pass


class VerdictFailed(StepFailed):
    """The run worked and its verification found a difference (or an action that never recovered)."""


class QueueError(PitrError):
    """A job could not be handed to a worker."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
