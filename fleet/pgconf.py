"""The restored copy's configuration: isolated from the original it was copied from.

A base backup carries the original's postgresql.conf and postgresql.auto.conf. Left alone, a copy would
archive into the original's archive (archive_command), stream from it (primary_conninfo, primary_slot_name),
fetch from its repository (restore_command), wait for its standbys (synchronous_standby_names), or even run on
its data directory (data_directory, as Debian's layout sets it). pgBackRest writes archive_mode = 'off' on
restore for the same reason. Our settings go into pitrsite.node.conf, included at the end of postgresql.conf;
postgresql.auto.conf is read after it, so every key we set is removed from there.
"""
from __future__ import annotations

import re
from pathlib import Path

NODE_CONF = "pitrsite.node.conf"
INCLUDE_LINE = f"include_if_exists = '{NODE_CONF}'"
KEY = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*=?")


def isolation(datadir: Path) -> dict[str, str]:
    """What a restored copy must run with, whatever the original had."""
    return {"archive_mode": "off", "archive_command": "", "archive_library": "", "primary_conninfo": "",
            "primary_slot_name": "", "synchronous_standby_names": "",
            # An original that once was a delayed standby would hold replay back, and its delay loop is one
            # of the places PostgreSQL acts on a promotion request (restores/recovery.py asks for one ahead).
            "recovery_min_apply_delay": "0", "recovery_end_command": "",
            "data_directory": str(datadir),
            "hba_file": str(datadir / "pg_hba.conf"), "ident_file": str(datadir / "pg_ident.conf")}


# Set by pitrsite only while the copy recovers; the original's (from postgresql.conf or .auto.conf) never applies.
RECOVERY_ONLY = {"restore_command"}


MEMORY_UNITS = {"": 8192, "kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30, "tb": 1 << 40}  # no unit: 8 kB blocks


def memory_setting(datadir: Path, key: str) -> int | None:
    """Bytes a memory setting (shared_buffers, say) is given in the copy's own files: the last line wins,
    postgresql.auto.conf after postgresql.conf, as PostgreSQL reads them. None when neither sets it."""
    found = None
    for name in ("postgresql.conf", "postgresql.auto.conf"):
        path = datadir / name
        for line in path.read_text().splitlines() if path.exists() else []:
            match = re.match(rf"^\s*{key}\s*=?\s*'?\s*(\d+)\s*([kKmMgGtT][bB])?\s*'?\s*(#.*)?$", line)
            if match:
                found = int(match[1]) * MEMORY_UNITS[(match[2] or "").lower()]
    return found


def render(values: dict[str, str], title: str) -> str:
    lines = [f"# Written by pitrsite for {title}."]
    for key, value in values.items():
        quoted = value if value.isdigit() else "'" + value.replace("'", "''") + "'"
        lines.append(f"{key} = {quoted}")
    return "\n".join(lines) + "\n"


OVERRIDDEN = "# pitrsite: overridden on the restored copy: "


def without_keys(text: str, keys: set[str]) -> str:
    """The file with every line setting one of `keys` commented out (kept, so a reader sees what was there).

    Lines an earlier call commented out come back first: once replay is over and its settings are dropped,
    the original's own (max_wal_size, say) apply again instead of PostgreSQL's defaults."""
    out = []
    for line in text.splitlines():
        line = line.removeprefix(OVERRIDDEN)
        match = KEY.match(line)
        if match and match[1].lower() in keys and not line.lstrip().startswith("#"):
            out.append(OVERRIDDEN + line)
        else:
            out.append(line)
    return "\n".join(out) + ("\n" if out else "")


def including_node_conf(text: str) -> str:
    """postgresql.conf ending with our include (an external server's copy has none yet)."""
    if INCLUDE_LINE in text:
        return text
    return text + ("" if text.endswith("\n") or not text else "\n") + INCLUDE_LINE + "\n"


SELF_LOGIN = ("# Written by pitrsite ahead of the original's lines: its own login to verify the copy, through the\n"
              "# copy's private socket directory (mode 0700: only the server account and root reach it). Users\n"
              "# keep the original's roles, passwords and lines below over TCP. Replication too: a copy promoted\n"
              "# to primary (restore --as-new-primary) is captured and backed up through the same socket.\n"
              "local all all trust\nlocal replication all trust\n")


def with_self_login(hba: str) -> str:
    """The copy's pg_hba.conf with pitrsite's own socket login first (pg_hba.conf: the first match wins)."""
    return hba if hba.startswith(SELF_LOGIN) else SELF_LOGIN + hba


LOCAL_HBA = ("# Written by pitrsite: the original's pg_hba.conf lives outside its data directory.\n"
             "local all all scram-sha-256\nhost all all 127.0.0.1/32 scram-sha-256\n")
