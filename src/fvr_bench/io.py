"""Files at the bottom of the package: atomic replacement and the CSV text of results.

Every results file is replaced atomically (:func:`atomic_write_bytes`: temporary sibling,
fsync, ``os.replace``): a process killed at any moment leaves the previous complete file,
never a torn one. CSV text is written with ``\\n`` line ends and floats as their ``repr``
(which round-trips exactly) and read back with every field a string. Imports only the
standard library (this module is below everything else of fvr_bench).
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


def atomic_write_with(path: Path, write: Callable[[str], None]) -> None:
    """Replace ``path`` with what ``write(temporary path)`` writes, so that readers see the old
    or the new file, never a mix: temporary sibling, fsync, ``os.replace``; the temporary file
    never outlives a failure. For writers that take a file name (safetensors, torch.save)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """:func:`atomic_write_with` of ``data``."""
    atomic_write_with(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write_bytes` of UTF-8 text, newlines as given."""
    atomic_write_bytes(path, text.encode("utf-8"))


def csv_text(rows: Iterable[dict[str, Any]], columns: list[str], header: bool) -> str:
    """CSV text of ``rows`` in ``columns`` (missing keys empty, extra keys ignored), ``\\n``
    line ends, each value through :func:`format_value`; the header line if ``header``."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    if header:
        writer.writeheader()
    for row in rows:
        writer.writerow({key: format_value(row.get(key)) for key in columns})
    return buffer.getvalue()


def rows_of(text: str) -> list[dict[str, str]]:
    """The rows of CSV text as written, every field a string (no float parsing)."""
    return list(csv.DictReader(io.StringIO(text)))


def read_rows(path: Path) -> list[dict[str, str]]:
    """:func:`rows_of` a CSV file."""
    return rows_of(path.read_text())


def format_value(value: Any) -> Any:
    """A CSV field: floats as their ``repr`` (round-trips exactly, so a resumed run
    reproduces the same summary), everything else as given."""
    if isinstance(value, float):
        return repr(value)
    return value
