"""User-facing errors. The CLI prints these as one line and exits with status 2."""


class TpnError(Exception):
    """An error caused by the user's input (file, field, argument), not by a bug."""


def first_line(e: Exception) -> str:
    """An exception's first line, at most 200 characters: a library's message in a one-line error."""
    text = str(e).strip().splitlines()
    return text[0][:200] if text else ""


def listing(items: list, limit: int = 8) -> str:
    """The first `limit` items, comma-separated, then '... (k more)': a long list in a one-line message."""
    def one(x) -> str:  # each item printable and short: it may come from a file
        text = str(x)
        return text if len(text) <= 200 and text.isprintable() else repr(text[:200]) + ("..." if len(text) > 200 else "")

    shown = ", ".join(one(x) for x in items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def read_text(path) -> str:
    """A user's text file (config, list, label map) as UTF-8, without the byte-order mark some
    editors put first (it would become part of the first path or class name); another encoding
    or a binary file is a one-line error naming the file, not a UnicodeDecodeError traceback."""
    from pathlib import Path

    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        raise TpnError(f"{path}: not a UTF-8 text file (byte 0x{data[e.start]:02x} at offset {e.start})") from None


def write_atomic(path, write, text: bool = False) -> None:
    """`write(f)` into a temporary file beside `path`, fsync, then rename it over `path`: a failed
    write (a full disk, a kill) leaves no partial or empty file and any file already at `path` as
    it was; the error is raised on. The file gets the mode `open` would give (0666 less the
    umask), not the temporary file's 0600."""
    import os
    import tempfile
    from pathlib import Path

    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w" if text else "wb", **({"encoding": "utf-8", "newline": ""} if text else {})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        mask = os.umask(0o022)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path, text: str) -> None:
    """`text` (UTF-8) to `path` by `write_atomic`: the whole file or none of it."""
    write_atomic(path, lambda f: f.write(text), text=True)


def csv_text(rows) -> str:
    """Rows (lists of cells) as CSV text, as `csv.writer` writes them to a file."""
    import csv
    import io

    buf = io.StringIO(newline="")
    csv.writer(buf).writerows(rows)
    return buf.getvalue()


def writable_dir(path, flag: str):
    """`path` as a directory this process can write in (made when missing), or a one-line error
    naming `flag` (a file there, a read-only place) before any work starts."""
    import os
    from pathlib import Path

    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".tpn-write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except FileExistsError:
        raise TpnError(f"{flag} {path}: a file is there, not a directory") from None
    except OSError as e:
        raise TpnError(f"{flag} {path}: cannot write there ({e.strerror or e})") from None
    return path
