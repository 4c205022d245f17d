"""The web API's bearer token (dashboard/api.py): a random secret in a 0600 file under the data home.

`scripts/pitr restore|backup` (pitrsite/client.py) reads the same file; whoever can read it may start jobs,
as whoever can run manage.py may.
"""
from __future__ import annotations

import hmac
from pathlib import Path

from pitrsite import home
from pitrsite.config import persistent_secret

FILE = "api_token"  # pitrsite/client.py spells the same path (it imports nothing of the project)


def path() -> Path:
    return home.secrets_dir(FILE)


def ensure() -> str:
    """The token, created on first need (services up, or the first API request)."""
    try:
        return persistent_secret(path())
    except FileExistsError:  # another web worker created it just now
        return path().read_text().strip()


def accepted(authorization: str) -> bool:
    """`Authorization: Bearer TOKEN` with the file's token, compared in constant time."""
    scheme, _, given = authorization.partition(" ")
    token = ensure()
    return scheme == "Bearer" and bool(token) and hmac.compare_digest(given.strip().encode(), token.encode())
