"""python manage.py walstatus [--json]: what the WAL catalog holds and whether capture keeps up."""
from __future__ import annotations

from pitrsite.jobs import reap_local
from pitrsite.output import PitrCommand
from walcatalog.catalog import summary


def _size(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


class Command(PitrCommand):
    help = "Show segments per timeline, newest segment, partial size, gaps, recoverable window, capturer lag."

    def run(self, *args, **opts) -> None:
        reap_local()  # a killed job reads interrupted at once
        status = summary()
        self.out.result(status, self._text(status))
        problems = []
        if status["corrupt"]["count"]:
            problems.append(f"{status['corrupt']['count']} WAL segment(s) corrupt in the local archive: "
                            "restore them from storage or take a new base backup")
        if (status.get("capturer") or {}).get("reason"):  # exit 0 means capture streams
            problems.append(status["capturer"]["reason"])
        if problems:
            self.out.fail("; ".join(problems))

    @staticmethod
    def _text(s: dict) -> list[str]:
        lines = [f"segment size     {_size(s['segment_size'])}"]
        w = lines.append
        if not s["timelines"]:
            w("segments         none yet: is the capturer running? (python manage.py fleet status)")
        for t in s["timelines"]:
            branch = f", branched from {t['parent']} at {t['switch_lsn']}" if t["parent"] else ""
            w(f"timeline {t['timeline']:<7} {t['segments']} segments ({t['complete']} complete, "
              f"{t['partial']} partial), {_size(t['bytes'])}{branch}")
        if s["newest_segment"]:
            n = s["newest_segment"]
            w(f"newest segment   {n['name']} (last commit {n['last_commit_at'] or 'none'})")
        if s["partial"]:
            p = s["partial"]
            w(f"partial          {p['name']}: {_size(p['size'])} captured, to {p['captured_to']}")
        w(f"gaps             {len(s['gaps']) or 'none'}")
        for gap in s["gaps"]:
            w(f"  {gap['text']}")
        corrupt = s["corrupt"]
        w(f"corrupt          {corrupt['count'] or 'none'}")
        for seg in corrupt["segments"]:
            w(f"  {seg['name']}: {seg['detail']}")
        w(f"window           {s['window']['description'] if s['window'] else 'none: nothing to restore from yet'}")
        c = s.get("capturer") or {}
        lag = f", lag {_size(c['lag_bytes'])}" if c.get("lag_bytes") is not None else ""
        errors = f" ({'; '.join(c['errors'])})" if c.get("errors") else ""
        w(f"capturer         {c.get('state', 'unknown')}, {c.get('health', 'unknown')}{lag}{errors}")
        return lines
