"""User-facing errors. The CLI prints these as one line and exits with status 2."""


class TpnError(Exception):
    """An error caused by the user's input (file, field, argument), not by a bug."""
