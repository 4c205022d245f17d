"""One exception hierarchy: what a user can fix gets a one-line message."""


class PitrError(Exception):
    """An error whose message is the whole story for the user (no traceback)."""


class ConfigError(PitrError):
    pass


class FleetError(PitrError):
    pass
