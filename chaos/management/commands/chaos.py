"""python manage.py chaos [--writers N] [--duration S] [--interval MIN-MAX] [--restores K] [--actions LIST] [--json]"""
from __future__ import annotations

from chaos.models import Verdict
from chaos.params import ACTION_HELP, ACTIONS, DAMAGE_ACTIONS, DRIVER_ACTIONS, ChaosParams
from chaos.report import chaos_dict
from chaos.run import queue_chaos, run_chaos
from fleet.command import ServerCommand
from pitrsite.jobs import ConsoleReporter, JobReporter

DEFAULTS = ChaosParams()  # the one set of defaults: chaos.params


def _span(pair: tuple[float, float]) -> str:
    return f"{pair[0]:g}-{pair[1]:g}"


class Command(ServerCommand):
    help = ("Write from concurrent clients while injecting failures, then restore to K logged moments and compare "
            "row for row. Exits non-zero when any verification fails. Actions: "
            + "; ".join(f"{name}: {text}" for name, text in ACTION_HELP.items()))

    json_help = "print the finished run as JSON"

    def arguments(self, parser):
        parser.add_argument("--writers", type=int, default=DEFAULTS.writers,
                            help=f"concurrent writers (default {DEFAULTS.writers})")
        parser.add_argument("--duration", type=float, default=DEFAULTS.duration,
                            help=f"seconds of writing with chaos (default {DEFAULTS.duration:g})")
        parser.add_argument("--interval", default=_span(DEFAULTS.interval),
                            help=f"MIN-MAX seconds between chaos actions (default {_span(DEFAULTS.interval)})")
        parser.add_argument("--restores", type=int, default=DEFAULTS.restores,
                            help=f"moments T to restore and verify (default {DEFAULTS.restores})")
        parser.add_argument("--actions", default="all",
                            help=f"comma-separated subset of {','.join(ACTIONS + DAMAGE_ACTIONS + DRIVER_ACTIONS)}, "
                                 f"or all ({','.join(ACTIONS)}; all,NAME adds an opt-in one), or none (default all; "
                                 f"{','.join(DRIVER_ACTIONS)} only on the docker driver)")
        parser.add_argument("--pause", default=_span(DEFAULTS.pause),
                            help=f"MIN-MAX seconds a paused server stays paused (default {_span(DEFAULTS.pause)})")
        parser.add_argument("--write-pause", type=float, default=DEFAULTS.write_pause,
                            help=f"mean seconds between one writer's commits (default {DEFAULTS.write_pause:g})")
        parser.add_argument("--seed", type=int, help="random seed, to repeat a run's choices")
        parser.add_argument("--restore-offset", type=float, default=DEFAULTS.restore_offset,
                            help="self-test: restore to T+OFFSET seconds but compare with the log at T; the run must "
                                 "then fail, naming the extra ids (proves the checks catch an inexact restore)")

    def run(self, *args, **opts):
        params = {"writers": opts["writers"], "duration": opts["duration"], "interval": opts["interval"],
                  "restores": opts["restores"], "actions": opts["actions"], "pause": opts["pause"],
                  "write_pause": opts["write_pause"], "seed": opts["seed"],
                  "restore_offset": opts["restore_offset"]}
        run = queue_chaos(params, trigger="command")
        self.out.warn(f"chaos run #{run.pk}: files in PITR_HOME/chaos/run-{run.pk}/")
        run = run_chaos(run, ConsoleReporter(self.out.console, JobReporter(run)))
        files = f"report: {run.run_dir}/report.json; log: {run.run_dir}/verification_log.jsonl"
        self.out.result(chaos_dict(run), [f"chaos run #{run.pk} {run.summary}", files])
        if run.verdict != Verdict.PASSED:
            self.out.fail(f"chaos run #{run.pk} failed: {run.error or run.summary}")
