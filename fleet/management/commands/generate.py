"""python manage.py generate [--rate ROWS_PER_S] [--duration S]: random rows into test_data."""
from __future__ import annotations

import signal
import threading

from fleet.generate import check_args, generate
from pitrsite.output import PitrCommand


class Command(PitrCommand):
    help = "Write random rows into test_data on the primary at a steady rate (Ctrl-C stops)."

    json_help = None

    def arguments(self, parser):
        parser.add_argument("--rate", type=float, default=100.0, help="rows per second (default 100)")
        parser.add_argument("--duration", type=float, default=None,
                            help="seconds to run (default: until Ctrl-C)")

    def run(self, *args, rate: float, duration: float | None, **opts) -> None:
        stop = threading.Event()
        # Ctrl-C or SIGTERM ends the loop between transactions, so the summary still prints.
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            check_args(rate, duration)
            result = generate(rate, duration, stop)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.out.result(result)
