"""User-facing errors. The CLI prints these as one line and exits with status 2."""


class TpnError(Exception):
    """An error caused by the user's input (file, field, argument), not by a bug."""


def listing(items: list, limit: int = 8) -> str:
    """The first `limit` items, comma-separated, then '... (k more)': a long list in a one-line message."""
    shown = ", ".join(str(x) for x in items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
