"""Messages of the domain, worded for the web: no command-line flags, times in the one displayed format.

The domain words its refusals for the command line (`use --latest`); the dashboard and the admin name their
own controls instead. Every PitrError shown on a web page goes through web_message().
"""
from __future__ import annotations

import re

from dashboard.templatetags.pitr import times

# Phrases first (they read better than the flag's bare name), then any flag left: `--restore-port` -> `restore port`.
PHRASES = (("use --latest", "choose the latest target"), ("leave it out with --actions", "leave it out of Actions"),
           ("remove it with --forget to drop its catalog", "remove it with the action that forgets its catalog"),
           ("check --host/--port/--user and", "check its host, port, user and"),
           ("--as-new-primary needs --port (the new primary's) and --restore-port", "a new primary needs both ports"),
           ("--as-new-primary", "As new primary"), ("--target-time", "time"), ("--target-lsn", "LSN"),
           ("--target-xid", "XID"), ("--target-name", "restore point name"), ("--immediate", "an immediate target"))
FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9-]*)")


def web_message(message: object) -> str:
    text = str(message)
    for flag, words in PHRASES:
        text = text.replace(flag, words)
    text = FLAG.sub(lambda m: m.group(1).replace("-", " "), text)
    return times(text)
