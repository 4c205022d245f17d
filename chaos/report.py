"""A chaos run's verdict and its report.json, and how a run and a restored moment read in text and JSON."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING

from chaos.models import ChaosRun, Verdict
from pitrsite.errors import VerdictFailed

if TYPE_CHECKING:
    from chaos.run import Chaos


def conclude(run: "Chaos", header: dict, resolution: dict, lsns: dict, picked: dict, moments: list,
             checks: list) -> None:
    problems = []
    bad_events = [e for e in run.events if not e.get("ok")]
    if bad_events:
        problems.append(f"{len(bad_events)} action(s) not recovered ({bad_events[0]['action']})")
    if not resolution["integrity_ok"]:
        problems.append(f"the log disagrees with the primary ({resolution['problems'][0]})")
    if lsns["commits_not_found"]:
        problems.append(f"{lsns['commits_not_found']} logged commit(s) not found in the captured WAL")
    fatal = [w for w in run.writers if w.fatal]
    if fatal:
        problems.append(f"writer {fatal[0].writer_id} died ({fatal[0].fatal})")
    if len(moments) < run.params.restores:
        problems.append(f"only {len(moments)} of {run.params.restores} moments could be picked "
                        f"in the recoverable window")
    passed = sum(1 for c in checks if c["ok"])
    if passed < len(checks):
        problems.append(f"{len(checks) - passed} of {len(checks)} restored moments differ from the log")
    verdict = Verdict.FAILED if problems else Verdict.PASSED
    summary = (f"{verdict.value}: {passed}/{len(checks)} restored moments exact; {len(run.events)} chaos "
               f"actions, {len(run.events) - len(bad_events)} recovered; {run.run_row.writes_count} commits by "
               f"{run.params.writers} writers, {resolution['unknown_attempts']} unknown outcomes resolved")
    if problems:
        summary += "; " + "; ".join(problems)
    report = {"run": run.run_row.pk, "verdict": verdict.value, "summary": summary, "passed": passed,
              "restores": len(checks), **{k: v for k, v in header.items() if k != "parameters"},
              "parameters": run.params.as_dict(), "moments": picked, "events": run.events,
              "verifications": checks}
    (run.dir / "report.json").write_text(json.dumps(report, indent=2, default=str))
    run.update(verdict=verdict, summary=summary, events=run.events, verifications=checks)
    if problems:
        raise VerdictFailed("verifying", "; ".join(problems))




def describe_moment(result: dict, total: int) -> str:
    head = f"T {result.get('index', '?')}/{total} {result['moment']} ({result['kind']}): "
    if result.get("error"):
        return head + f"FAILED: {result['error']}"
    if result["ok"]:
        return head + (f"exact: {result['expected_rows']} rows, end of recovery {result['end_lsn']['final']}, "
                       f"count {result['count']['restored']}")
    failed = [name for name, ok in result["checks"].items() if not ok]
    return head + (f"FAILED {', '.join(failed)}: missing {result['missing_count']} {result['missing_ids'][:10]}, "
                   f"extra {result['extra_count']} {result['extra_ids'][:10]}, gaps {result['prefix_gaps']}, "
                   f"end LSN {result['end_lsn']}, count {result['count']['restored']} vs {result['count']['expected']}")



def chaos_dict(run: ChaosRun) -> dict:
    from walcatalog.serializers import job_dict

    return {**job_dict(run), "parameters": run.parameters, "verdict": run.verdict or None, "summary": run.summary,
            "writes_count": run.writes_count, "unknown_count": run.unknown_count, "writer_ids": run.writer_ids,
            "backup": run.backup.label if run.backup else None, "run_dir": run.run_dir,
            "passed": run.passed_count, "restores": len(run.verifications),
            "events": run.events, "verifications": run.verifications}


