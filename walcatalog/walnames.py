"""PostgreSQL WAL file names and LSN arithmetic.

Pure functions in the spirit of barman's ``xlog.py``: no Django, no I/O.
Everything here mirrors what the PostgreSQL server itself writes, so that
names we produce and names we accept agree with ``pg_wal`` and with
``pg_receivewal`` output byte for byte.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MIN_SEGMENT_SIZE = 1 << 20
MAX_SEGMENT_SIZE = 1 << 30
DEFAULT_SEGMENT_SIZE = 16 << 20

# LSNs are unsigned 64-bit; the exclusive end of the very last segment is 2**64.
_LSN_LIMIT = 1 << 64
_MAX_TIMELINE = 0xFFFFFFFF

_LSN_RE = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")
_SEG = r"([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})"
# Patterns are case-sensitive on purpose: PostgreSQL only ever writes uppercase
# hex, so a lowercase name was not produced by the server and is not a WAL file.
_PATTERNS = {
    "segment": re.compile(_SEG),
    "partial": re.compile(_SEG + r"\.partial"),
    "backup": re.compile(_SEG + r"\.([0-9A-F]{8})\.backup"),
    "history": re.compile(r"([0-9A-F]{8})\.history"),
}


class WalNameError(ValueError):
    """A WAL file name, LSN, history file or segment size is invalid."""


def validate_segment_size(size: int) -> int:
    """Return ``size`` if PostgreSQL accepts it as ``wal_segment_size``."""
    if (
        not isinstance(size, int)
        or isinstance(size, bool)
        or not MIN_SEGMENT_SIZE <= size <= MAX_SEGMENT_SIZE
        or size & (size - 1)
    ):
        raise WalNameError(
            f"invalid WAL segment size {size!r}: must be a power of two "
            f"between 1 MiB and 1 GiB"
        )
    return size


def _check_int(value: int, what: str, low: int, high: int) -> int:
    # bool is an int subclass; True as a timeline or LSN is always a bug.
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise WalNameError(f"{what} {value!r} out of range {low}..{high}")
    return value


def parse_lsn(text: str) -> int:
    """Parse PostgreSQL LSN text such as ``16/B374D848`` into an integer."""
    # fullmatch, not match with "$": "$" would let a trailing newline through.
    m = _LSN_RE.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise WalNameError(f"malformed LSN {text!r}: expected the form 0/16B3740")
    return (int(m.group(1), 16) << 32) | int(m.group(2), 16)


def format_lsn(lsn: int) -> str:
    """Format an LSN like PostgreSQL's ``%X/%X`` (uppercase, unpadded)."""
    _check_int(lsn, "LSN", 0, _LSN_LIMIT - 1)
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def segments_per_xlogid(segment_size: int) -> int:
    """Segments per 4 GiB "xlogid", the middle part of a segment name."""
    return 0x1_0000_0000 // validate_segment_size(segment_size)


def _max_segno(segment_size: int) -> int:
    return _LSN_LIMIT // validate_segment_size(segment_size) - 1


def segment_of_lsn(lsn: int, segment_size: int) -> int:
    """Number of the segment holding the byte at ``lsn``."""
    _check_int(lsn, "LSN", 0, _LSN_LIMIT - 1)
    return lsn // validate_segment_size(segment_size)


def segment_start_lsn(segno: int, segment_size: int) -> int:
    """First LSN of segment ``segno``."""
    _check_int(segno, "segment number", 0, _max_segno(segment_size))
    return segno * segment_size


def segment_end_lsn(segno: int, segment_size: int) -> int:
    """Exclusive end LSN of ``segno`` (may be 2**64 for the last segment)."""
    return segment_start_lsn(segno, segment_size) + segment_size


def segment_name(timeline: int, segno: int, segment_size: int) -> str:
    """WAL segment file name, exactly like PostgreSQL's ``XLogFileName``."""
    _check_int(timeline, "timeline", 1, _MAX_TIMELINE)
    _check_int(segno, "segment number", 0, _max_segno(segment_size))
    per_id = segments_per_xlogid(segment_size)
    return f"{timeline:08X}{segno // per_id:08X}{segno % per_id:08X}"


def history_name(timeline: int) -> str:
    """Timeline history file name, e.g. ``00000002.history``."""
    _check_int(timeline, "timeline", 1, _MAX_TIMELINE)
    return f"{timeline:08X}.history"


@dataclass(frozen=True)
class WalFile:
    """A parsed WAL archive file name.

    ``segno`` depends on the segment size given to :func:`parse_wal_name`;
    pass the same size to :meth:`start_lsn` / :meth:`end_lsn`.
    """

    name: str
    kind: str  # "segment", "partial", "history" or "backup"
    timeline: int
    segno: int | None  # None for history files
    backup_offset: int | None = None  # only for "backup" files

    def start_lsn(self, segment_size: int) -> int:
        """First LSN of the segment this file belongs to."""
        if self.segno is None:
            raise WalNameError(f"{self.name!r} is a history file and covers no LSN range")
        return segment_start_lsn(self.segno, segment_size)

    def end_lsn(self, segment_size: int) -> int:
        """Exclusive end LSN of the segment this file belongs to."""
        return self.start_lsn(segment_size) + segment_size


def parse_wal_name(name: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> WalFile:
    """Parse a bare WAL archive file name; raise WalNameError if it is not one."""
    per_id = segments_per_xlogid(segment_size)
    if not isinstance(name, str):
        raise WalNameError(f"{name!r} is not a WAL file name")
    for kind, pattern in _PATTERNS.items():  # noqa: B007 - kind is read after the loop (break)
        m = pattern.fullmatch(name)
        if m is not None:
            break
    else:
        if any(re.fullmatch(p.pattern, name, re.I) for p in _PATTERNS.values()):
            raise WalNameError(f"{name!r} is not a WAL file name: hex digits must be uppercase")
        raise WalNameError(f"{name!r} is not a WAL file name")

    fields = [int(g, 16) for g in m.groups()]
    timeline = fields[0]
    if timeline == 0:
        raise WalNameError(f"{name!r} is not a WAL file name: timeline 0 does not exist")
    if kind == "history":
        return WalFile(name, kind, timeline, None)

    xlogid, seg = fields[1], fields[2]
    if seg >= per_id:
        raise WalNameError(
            f"{name!r} does not fit the WAL segment size {segment_size}: "
            f"last part must be below {per_id:08X}"
        )
    offset = fields[3] if kind == "backup" else None
    # The offset is the backup start's position inside its segment.
    if offset is not None and offset >= segment_size:
        raise WalNameError(
            f"{name!r} does not fit the WAL segment size {segment_size}: "
            f"offset {offset:08X} is past the segment end"
        )
    return WalFile(name, kind, timeline, xlogid * per_id + seg, offset)


def is_wal_name(name: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> bool:
    """True if :func:`parse_wal_name` accepts ``name``."""
    try:
        parse_wal_name(name, segment_size)
    except WalNameError:
        return False
    return True


@dataclass(frozen=True)
class HistoryEntry:
    """One line of a timeline history file."""

    parent_timeline: int
    switch_lsn: int
    reason: str


def parse_history(text: str) -> list[HistoryEntry]:
    """Parse a ``TTTTTTTT.history`` file's content as PostgreSQL writes it."""
    entries: list[HistoryEntry] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        # Like readTimeLineHistory(): leading whitespace, blank lines and
        # '#' comments are ignored.
        line = line.lstrip()
        if not line or line.startswith("#"):
            continue
        parts = line.split("\t", 2)
        if len(parts) < 2 or not parts[0].isascii() or not parts[0].isdigit():
            raise WalNameError(
                f"history line {lineno}: expected 'parentTLI<TAB>X/Y<TAB>reason', got {line!r}"
            )
        try:
            switch_lsn = parse_lsn(parts[1])
        except WalNameError as exc:
            raise WalNameError(f"history line {lineno}: {exc}") from None
        parent = int(parts[0])
        if not 1 <= parent <= _MAX_TIMELINE:
            raise WalNameError(f"history line {lineno}: invalid timeline {parent}")
        # PostgreSQL rejects the file too when timelines do not increase.
        if entries and parent <= entries[-1].parent_timeline:
            raise WalNameError(
                f"history line {lineno}: timeline {parent} does not follow "
                f"{entries[-1].parent_timeline}"
            )
        reason = parts[2].rstrip() if len(parts) > 2 else ""
        entries.append(HistoryEntry(parent, switch_lsn, reason))
    return entries


def history_timeline_chain(
    entries: list[HistoryEntry], timeline: int
) -> list[tuple[int, int, int | None]]:
    """(timeline, begin_lsn, end_lsn or None) from the oldest parent to ``timeline``."""
    _check_int(timeline, "timeline", 1, _MAX_TIMELINE)
    chain: list[tuple[int, int, int | None]] = []
    begin = 0
    for entry in entries:
        if entry.switch_lsn < begin:
            raise WalNameError(
                f"timeline {entry.parent_timeline} ends at {format_lsn(entry.switch_lsn)}, "
                f"before it begins at {format_lsn(begin)}"
            )
        chain.append((entry.parent_timeline, begin, entry.switch_lsn))
        begin = entry.switch_lsn
    if entries and timeline <= entries[-1].parent_timeline:
        raise WalNameError(
            f"timeline {timeline} cannot descend from timeline {entries[-1].parent_timeline}"
        )
    chain.append((timeline, begin, None))
    return chain


def segments_between(start_lsn: int, end_lsn: int, segment_size: int) -> range:
    """Segment numbers needed to read from ``start_lsn`` up to ``end_lsn`` (exclusive).

    An empty range (end == start) still needs the segment holding start_lsn,
    because a reader must open it to find out there is nothing to read.
    """
    _check_int(start_lsn, "start LSN", 0, _LSN_LIMIT - 1)
    _check_int(end_lsn, "end LSN", 0, _LSN_LIMIT)
    if end_lsn < start_lsn:
        raise WalNameError(
            f"end LSN {format_lsn(end_lsn)} is before start LSN {format_lsn(start_lsn)}"
        )
    first = segment_of_lsn(start_lsn, segment_size)
    last = first if end_lsn == start_lsn else segment_of_lsn(end_lsn - 1, segment_size)
    return range(first, last + 1)
