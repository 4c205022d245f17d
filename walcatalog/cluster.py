"""Which cluster a WAL file comes from: the system identifier and version in its first page header.

Every segment starts with an XLogLongPageHeaderData (access/xlog_internal.h): xlp_magic (2 bytes, one value
per major version), xlp_info, xlp_tli, xlp_pageaddr, xlp_rem_len, padding, then xlp_sysid (8 bytes at
offset 24), the cluster's system identifier from initdb. Two clusters reuse the same segment names, never
the same identifier, so the catalog and the storage keys are kept apart by it (as pgBackRest's
archive/<stanza>/<version>-<id>/ is).
"""
from __future__ import annotations

import struct
from pathlib import Path

from pitrsite.errors import OtherCluster, PitrError

# XLOG_PAGE_MAGIC per major version (access/xlog_internal.h of each release).
MAGIC_TO_MAJOR = {0xD101: 12, 0xD106: 13, 0xD10D: 14, 0xD110: 15, 0xD113: 16, 0xD116: 17, 0xD118: 18}
HEADER = struct.Struct("<HHIQI4xQ")  # magic, info, tli, pageaddr, rem_len, (pad), sysid: 32 bytes


def read_cluster(path: Path) -> tuple[int, str] | None:
    """(major version, system identifier) from a WAL file's first page; None while the header is not written."""
    with open(path, "rb") as fh:
        head = fh.read(HEADER.size)
    if len(head) < HEADER.size:
        return None
    magic, _info, _tli, _pageaddr, _rem, sysid = HEADER.unpack(head)
    if magic not in MAGIC_TO_MAJOR:
        raise PitrError(f"{path.name} does not start with a WAL page header (magic {magic:#06x})")
    if not sysid:
        return None  # a zero-filled file pg_receivewal has just created
    return MAGIC_TO_MAJOR[magic], str(sysid)


def header_segment_size(path: Path) -> int:
    """xlp_seg_size, right after xlp_sysid in the long page header that starts every segment."""
    with open(path, "rb") as fh:
        fh.seek(HEADER.size)
        head = fh.read(4)
    if len(head) < 4:
        raise PitrError(f"{path.name} is too short to hold a WAL page header")
    return int(struct.unpack("<I", head)[0])


def cluster_dir(major: int | None, sysid: str) -> str:
    """The storage directory of one cluster's files under its server's prefix: "<version>-<system id>"."""
    return f"{major}-{sysid}"


def parse_cluster_dir(name: str) -> tuple[int, str] | None:
    major, _, sysid = name.partition("-")
    return (int(major), sysid) if major.isdigit() and sysid.isdigit() else None


def check_cluster(path: Path) -> None:
    """Refuse WAL of another cluster; the first WAL seen for a server names its cluster."""
    from fleet import servers
    from fleet.models import Server

    found = read_cluster(path)
    if found is None:
        return
    major, sysid = found
    server = servers.current()
    if not server.system_identifier:
        # Conditional: two indexers racing both read back the one that won.
        Server.objects.filter(pk=server.pk, system_identifier="").update(system_identifier=sysid, pg_major=major)
        server.refresh_from_db(fields=["system_identifier", "pg_major"])
    if server.system_identifier != sysid:
        todo = ("the demo primary was initialised anew: move its data directory and this archive aside and "
                "bring the old cluster back with `restore --as-new-primary`, or run a new cluster in a new "
                "PITR_HOME" if server.managed else
                "a re-initialised or new cluster needs its own server entry (`server add`) and archive directory")
        raise OtherCluster(
            f"WAL of another cluster (PostgreSQL {major}, system identifier {sysid}): server {server.name} is "
            f"cluster {server.system_identifier}; refused, not indexed: {todo}")
