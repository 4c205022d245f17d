#!/usr/bin/env python
"""Django's command-line utility for pitrsite."""
import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pitrsite.settings")
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line
    from django.db import DatabaseError

    try:
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as exc:
        # A bad setting is the user's to fix: one line, no traceback.
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(2)
    except DatabaseError:
        from pitrsite.dbcheck import unmigrated_message

        message = unmigrated_message()
        if message is None:
            raise
        sys.stderr.write(f"error: {message}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
