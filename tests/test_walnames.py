"""Tests for walcatalog.walnames: pure, no database and no Django."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from walcatalog.walnames import (
    DEFAULT_SEGMENT_SIZE,
    MAX_SEGMENT_SIZE,
    MIN_SEGMENT_SIZE,
    HistoryEntry,
    WalFile,
    WalNameError,
    format_lsn,
    history_name,
    history_timeline_chain,
    is_wal_name,
    parse_history,
    parse_lsn,
    parse_wal_name,
    segment_end_lsn,
    segment_name,
    segment_of_lsn,
    segment_start_lsn,
    segments_between,
    segments_per_xlogid,
    validate_segment_size,
)

MiB = 1 << 20
GiB = 1 << 30
U64 = (1 << 64) - 1


# --- segment sizes -----------------------------------------------------------


def test_constants():
    assert MIN_SEGMENT_SIZE == MiB
    assert MAX_SEGMENT_SIZE == GiB
    assert DEFAULT_SEGMENT_SIZE == 16 * MiB
    assert issubclass(WalNameError, ValueError)


@pytest.mark.parametrize("exp", range(20, 31))
def test_valid_segment_sizes(exp):
    assert validate_segment_size(1 << exp) == 1 << exp


@pytest.mark.parametrize(
    "size", [0, -16 * MiB, MiB // 2, 2 * GiB, 3 * MiB, 16 * MiB + 1, 1.0 * MiB, "16777216", True]
)
def test_invalid_segment_sizes(size):
    with pytest.raises(WalNameError) as exc:
        validate_segment_size(size)
    assert "\n" not in str(exc.value)


def test_segments_per_xlogid():
    assert segments_per_xlogid(16 * MiB) == 256
    assert segments_per_xlogid(MiB) == 4096
    assert segments_per_xlogid(GiB) == 4
    with pytest.raises(WalNameError):
        segments_per_xlogid(3 * MiB)


# --- LSN text ----------------------------------------------------------------


@pytest.mark.parametrize(
    "text, value",
    [
        ("0/0", 0),
        ("0/16B3740", 0x16B3740),
        ("0/16b3740", 0x16B3740),
        ("1/28", 0x1_0000_0028),
        ("16/B374D848", 0x16_B374D848),
        ("FFFFFFFF/FFFFFFFF", U64),
        ("00000000/00000001", 1),
    ],
)
def test_parse_lsn(text, value):
    assert parse_lsn(text) == value


@pytest.mark.parametrize(
    "text",
    [
        "", " ", "\t", "0", "/", "0/", "/0", "0//0", "0/0/0", "-1/0", "0/-1", "+1/0",
        "123456789/0", "0/123456789", "0x1/0", " 0/0", "0/0 ", "0/0\n", "G/0", "0/1g",
        "0 /0", "1_0/0", "\uff11/0", "0.0",
    ],
)
def test_parse_lsn_malformed(text):
    with pytest.raises(WalNameError) as exc:
        parse_lsn(text)
    assert str(exc.value) == f"malformed LSN {text!r}: expected the form 0/16B3740"


def test_parse_lsn_message_shape():
    with pytest.raises(WalNameError, match=r"^malformed LSN 'junk': expected the form 0/16B3740$"):
        parse_lsn("junk")


@pytest.mark.parametrize(
    "value, text",
    [(0, "0/0"), (0x1_0000_0028, "1/28"), (0x16B3740, "0/16B3740"), (U64, "FFFFFFFF/FFFFFFFF"),
     (0x1_0000_0000, "1/0")],
)
def test_format_lsn(value, text):
    assert format_lsn(value) == text


@pytest.mark.parametrize("value", [-1, 1 << 64, True])
def test_format_lsn_out_of_range(value):
    with pytest.raises(WalNameError):
        format_lsn(value)


# --- segment arithmetic and names (known PostgreSQL values) -------------------


def test_known_16mib_examples():
    size = 16 * MiB
    assert segment_name(1, 1, size) == "000000010000000000000001"
    assert segment_start_lsn(1, size) == parse_lsn("0/1000000")
    assert segment_end_lsn(1, size) == parse_lsn("0/2000000")
    assert segment_name(1, 256, size) == "000000010000000100000000"
    assert segment_name(1, 255, size) == "0000000100000000000000FF"
    assert segment_of_lsn(parse_lsn("0/16B3740"), size) == 1
    assert segment_name(0x2A, segment_of_lsn(parse_lsn("16/B374D848"), size), size) == (
        "0000002A00000016000000B3"
    )
    wal = parse_wal_name("000000010000000000000001")
    assert wal == WalFile("000000010000000000000001", "segment", 1, 1, None)
    assert wal.start_lsn(size) == 0x1000000
    assert wal.end_lsn(size) == 0x2000000
    assert parse_wal_name("000000010000000100000000").segno == 256


def test_known_1gib_examples():
    wal = parse_wal_name("000000010000000000000003", GiB)
    assert wal.segno == 3
    assert format_lsn(wal.start_lsn(GiB)) == "0/C0000000"
    assert format_lsn(wal.end_lsn(GiB)) == "1/0"
    assert parse_wal_name("000000010000000100000000", GiB).segno == 4
    with pytest.raises(WalNameError, match="does not fit the WAL segment size"):
        parse_wal_name("000000010000000000000004", GiB)
    assert not is_wal_name("000000010000000000000004", GiB)


def test_known_1mib_examples():
    wal = parse_wal_name("0000000100000000000000FF", MiB)
    assert wal.segno == 0xFF
    assert format_lsn(wal.start_lsn(MiB)) == "0/FF00000"
    assert parse_wal_name("000000010000000000000FFF", MiB).segno == 0xFFF
    with pytest.raises(WalNameError, match="does not fit"):
        parse_wal_name("000000010000000000001000", MiB)


def test_16mib_rejects_segment_part_above_ff():
    with pytest.raises(WalNameError, match="does not fit"):
        parse_wal_name("000000010000000000000100")


def test_last_segment():
    size = 16 * MiB
    last = (1 << 64) // size - 1
    assert segment_name(0xFFFFFFFF, last, size) == "FFFFFFFFFFFFFFFF000000FF"
    assert segment_end_lsn(last, size) == 1 << 64
    assert segment_of_lsn(U64, size) == last
    with pytest.raises(WalNameError):
        segment_name(1, last + 1, size)
    with pytest.raises(WalNameError):
        segment_start_lsn(-1, size)


@pytest.mark.parametrize("timeline", [0, -1, 1 << 32])
def test_segment_name_bad_timeline(timeline):
    with pytest.raises(WalNameError):
        segment_name(timeline, 1, DEFAULT_SEGMENT_SIZE)
    with pytest.raises(WalNameError):
        history_name(timeline)


def test_segment_name_bad_size():
    with pytest.raises(WalNameError):
        segment_name(1, 1, 3 * MiB)


# --- other file kinds --------------------------------------------------------


def test_partial():
    wal = parse_wal_name("00000002000000000000000A.partial")
    assert wal == WalFile("00000002000000000000000A.partial", "partial", 2, 10, None)
    assert wal.start_lsn(DEFAULT_SEGMENT_SIZE) == 0xA000000


def test_history():
    assert history_name(2) == "00000002.history"
    assert history_name(0x1F) == "0000001F.history"
    wal = parse_wal_name("00000002.history")
    assert wal == WalFile("00000002.history", "history", 2, None, None)
    with pytest.raises(WalNameError):
        wal.start_lsn(DEFAULT_SEGMENT_SIZE)


def test_backup():
    name = "000000010000000000000002.00000028.backup"
    wal = parse_wal_name(name)
    assert wal == WalFile(name, "backup", 1, 2, 0x28)
    assert wal.start_lsn(DEFAULT_SEGMENT_SIZE) + wal.backup_offset == parse_lsn("0/2000028")
    with pytest.raises(WalNameError, match="does not fit"):
        parse_wal_name("000000010000000000000002.01000000.backup")
    assert is_wal_name("000000010000000000000002.00FFFFFF.backup")


def test_walfile_is_frozen():
    wal = parse_wal_name("000000010000000000000001")
    with pytest.raises(AttributeError):
        wal.segno = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    "name",
    [
        "xlogtemp.1234",
        "000000010000000000000001.partial.tmp",
        "000000010000000000000001.tmp",
        "00000000000000000000000A",  # timeline 0
        "00000000.history",  # timeline 0
        "00000000000000000000000A.partial",
        "00000001000000000000000a",  # lowercase hex
        "00000001000000000000000A.PARTIAL",
        "0000000a.history",
        "000000010000000000000002.0000002a.backup",
        "00000001000000000000001",  # 23 chars
        "0000000100000000000000011",  # 25 chars
        "",
        ".history",
        "archive_status",
        "RECOVERYHISTORY",
        "pg_wal/000000010000000000000001",
        "000000010000000000000001\n",
        " 000000010000000000000001",
        "000000010000000000000001.backup",
        "000000010000000000000001.00000028",
        "0000000G0000000000000001",
        "000000010000000000000001.gz",
        "00000002.history.tmp",
    ],
)
def test_junk_rejected(name):
    with pytest.raises(WalNameError) as exc:
        parse_wal_name(name)
    message = str(exc.value)
    assert repr(name) in message
    assert "\n" not in message
    assert not is_wal_name(name)


def test_lowercase_message_is_specific():
    with pytest.raises(WalNameError, match="uppercase"):
        parse_wal_name("00000001000000000000000a")


def test_timeline_zero_message():
    with pytest.raises(WalNameError, match="timeline 0"):
        parse_wal_name("00000000000000000000000A")


def test_non_string_name():
    with pytest.raises(WalNameError):
        parse_wal_name(None)  # type: ignore[arg-type]
    assert not is_wal_name(b"000000010000000000000001")  # type: ignore[arg-type]


def test_parse_wal_name_bad_segment_size():
    with pytest.raises(WalNameError):
        parse_wal_name("000000010000000000000001", 3 * MiB)


# --- history files -----------------------------------------------------------

# As written by PostgreSQL: parent's lines copied, a blank line, then the new one.
HISTORY_3 = (
    "1\t0/3000000\tno recovery target specified\n"
    "\n"
    "2\t0/5000000\tat restore point \"before upgrade\"\n"
)


def test_parse_history():
    assert parse_history(HISTORY_3) == [
        HistoryEntry(1, 0x3000000, "no recovery target specified"),
        HistoryEntry(2, 0x5000000, 'at restore point "before upgrade"'),
    ]


def test_parse_history_comments_empty_reason_and_crlf():
    text = "# comment\r\n  # indented comment\r\n\r\n1\t1/28\r\n3\tA/B\t\r\n   \n"
    assert parse_history(text) == [HistoryEntry(1, 0x1_0000_0028, ""), HistoryEntry(3, 0xA_0000000B, "")]
    assert parse_history("") == []


def test_parse_history_reason_with_time():
    entries = parse_history("1\t0/1A000098\tbefore 2024-05-01 12:00:00+00\n")
    assert entries == [HistoryEntry(1, 0x1A000098, "before 2024-05-01 12:00:00+00")]


@pytest.mark.parametrize(
    "text, lineno",
    [
        ("1 0/3000000 reason\n", 1),
        ("1\n", 1),
        ("x\t0/3000000\treason\n", 1),
        ("1\t0/3000000\tok\n\n2\tnot-an-lsn\tbad\n", 3),
        ("1\t0/3000000\tok\n1\t0/4000000\tdup\n", 2),
        ("2\t0/3000000\tok\n1\t0/4000000\tbackwards\n", 2),
        ("0\t0/3000000\ttimeline zero\n", 1),
        ("-1\t0/3000000\tnegative\n", 1),
        ("4294967296\t0/3000000\ttoo big\n", 1),
    ],
)
def test_parse_history_malformed(text, lineno):
    with pytest.raises(WalNameError, match=rf"^history line {lineno}: ") as exc:
        parse_history(text)
    assert "\n" not in str(exc.value)


def test_history_chain():
    entries = parse_history(HISTORY_3)
    assert history_timeline_chain(entries, 3) == [
        (1, 0, 0x3000000),
        (2, 0x3000000, 0x5000000),
        (3, 0x5000000, None),
    ]


def test_history_chain_skipping_timelines_and_empty():
    entries = [HistoryEntry(1, 0x3000000, ""), HistoryEntry(4, 0x3000000, "")]
    assert history_timeline_chain(entries, 7) == [
        (1, 0, 0x3000000),
        (4, 0x3000000, 0x3000000),
        (7, 0x3000000, None),
    ]
    assert history_timeline_chain([], 1) == [(1, 0, None)]


def test_history_chain_invalid():
    with pytest.raises(WalNameError):
        history_timeline_chain(parse_history(HISTORY_3), 2)
    with pytest.raises(WalNameError):
        history_timeline_chain([HistoryEntry(1, 0x5000000, ""), HistoryEntry(2, 0x3000000, "")], 3)


# --- segments_between ----------------------------------------------------------


def test_segments_between_examples():
    size = 16 * MiB
    assert segments_between(0x1000000, 0x1000000, size) == range(1, 2)
    assert segments_between(0x1000000, 0x2000000, size) == range(1, 2)
    assert segments_between(0x1000000, 0x2000001, size) == range(1, 3)
    assert segments_between(0x16B3740, 0x3000028, size) == range(1, 4)
    assert segments_between(0, 1 << 64, GiB) == range(0, (1 << 64) // GiB)
    with pytest.raises(WalNameError):
        segments_between(0x2000000, 0x1000000, size)
    with pytest.raises(WalNameError):
        segments_between(0, 1, 3 * MiB)


# --- properties ----------------------------------------------------------------

segment_sizes = st.integers(min_value=20, max_value=30).map(lambda e: 1 << e)
timelines = st.integers(min_value=1, max_value=0xFFFFFFFF)
lsns = st.integers(min_value=0, max_value=U64)


@st.composite
def size_and_segno(draw):
    size = draw(segment_sizes)
    per_id = segments_per_xlogid(size)
    segno = draw(st.integers(min_value=0, max_value=0xFFFFFFFF * per_id + per_id - 1))
    return size, segno


@given(timelines, size_and_segno())
def test_segment_name_round_trip(timeline, size_segno):
    size, segno = size_segno
    name = segment_name(timeline, segno, size)
    assert len(name) == 24 and name == name.upper()
    wal = parse_wal_name(name, size)
    assert (wal.kind, wal.timeline, wal.segno) == ("segment", timeline, segno)
    partial = parse_wal_name(name + ".partial", size)
    assert (partial.kind, partial.timeline, partial.segno) == ("partial", timeline, segno)
    assert wal.start_lsn(size) == segment_start_lsn(segno, size)


@given(timelines, size_and_segno(), size_and_segno())
def test_segment_names_sort_like_segnos(timeline, a, b):
    size = a[0]
    per_id = segments_per_xlogid(size)
    sa, sb = a[1] % (0x1_0000_0000 * per_id), b[1] % (0x1_0000_0000 * per_id)
    na, nb = segment_name(timeline, sa, size), segment_name(timeline, sb, size)
    assert (na < nb) == (sa < sb)


@given(timelines)
def test_history_name_round_trip(timeline):
    wal = parse_wal_name(history_name(timeline))
    assert (wal.kind, wal.timeline, wal.segno) == ("history", timeline, None)


@given(lsns)
def test_lsn_round_trip(lsn):
    text = format_lsn(lsn)
    assert parse_lsn(text) == lsn
    assert parse_lsn(text.lower()) == lsn


@given(size_and_segno(), st.data())
def test_segment_lsn_range(size_segno, data):
    size, segno = size_segno
    start, end = segment_start_lsn(segno, size), segment_end_lsn(segno, size)
    assert end - start == size
    assert segment_of_lsn(start, size) == segno
    lsn = data.draw(st.integers(min_value=start, max_value=end - 1))
    assert segment_of_lsn(lsn, size) == segno
    if end <= U64:
        assert segment_of_lsn(end, size) == segno + 1


@given(segment_sizes, lsns, lsns)
def test_segments_between_covers_exactly(size, a, b):
    start, end = min(a, b), max(a, b)
    segs = segments_between(start, end, size)
    assert segs.step == 1 and len(segs) >= 1
    assert segs[0] == segment_of_lsn(start, size)
    if end == start:
        assert len(segs) == 1
    else:
        # Every byte start..end-1 lies in a listed segment, and every listed
        # segment holds at least one of those bytes.
        assert segs[-1] == segment_of_lsn(end - 1, size)
        for segno in [*segs[:3], *segs[-3:]]:
            assert segment_start_lsn(segno, size) < end
            assert segment_end_lsn(segno, size) > start
    # The neighbours outside the range hold none of those bytes.
    if segs[0] > 0:
        assert segment_end_lsn(segs[0] - 1, size) <= start
    if segment_end_lsn(segs[-1], size) < 1 << 64:
        assert segment_start_lsn(segs[-1] + 1, size) >= max(end, start + 1)


@given(segment_sizes, lsns, st.integers(min_value=0, max_value=4 * GiB))
def test_segments_between_nearby(size, start, length):
    end = min(start + length, 1 << 64)
    segs = segments_between(start, end, size)
    last_byte = max(start, end - 1)
    assert list(segs) == list(
        range(segment_of_lsn(start, size), segment_of_lsn(last_byte, size) + 1)
    )
    assert segment_start_lsn(segs[0], size) <= start
    assert segment_end_lsn(segs[-1], size) >= end
