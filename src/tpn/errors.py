"""User-facing errors. The CLI prints these as one line and exits with status 2."""


class TpnError(Exception):
    """An error caused by the user's input (file, field, argument), not by a bug."""


def listing(items: list, limit: int = 8) -> str:
    """The first `limit` items, comma-separated, then '... (k more)': a long list in a one-line message."""
    shown = ", ".join(str(x) for x in items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def read_text(path) -> str:
    """A user's text file (config, list, label map) as UTF-8; another encoding or a binary file
    is a one-line error naming the file, not a UnicodeDecodeError traceback."""
    from pathlib import Path

    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TpnError(f"{path}: not a UTF-8 text file (byte 0x{data[e.start]:02x} at offset {e.start})") from None
