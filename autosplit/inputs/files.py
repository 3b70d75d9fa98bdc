"""Read a user's input file, refusing anything that is not a plain file of a sane size.

The reading twin of ``autosplit.atomic``: every reader of a user-supplied file (cluster, chip,
plan, suite, profile, importer inputs) goes through here first, so a path that is a folder, a
FIFO, a device (``/dev/zero`` behind a symlink) or a multi-gigabyte file is refused at once
with exit code 2 instead of blocking, exhausting memory or surfacing as a traceback. The file is
opened non-blocking and read at most ``limit + 1`` bytes, so even a file swapped for a FIFO
between the check and the read cannot hang the command.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from autosplit.errors import BadInputError

__all__ = ["MAX_INPUT_BYTES", "check_input_file", "read_input_bytes", "read_input_text"]

#: Default ceiling on an input file (64 MiB): far above any plan, cluster or profile autosplit
#: writes, far below what would make reading it slow or memory-hungry.
MAX_INPUT_BYTES = 64 * 2**20


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n:,} bytes"


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _refuse_mode(mode: int, *, file: str, what: str) -> None:
    if not stat.S_ISREG(mode):
        raise BadInputError(f"is {_kind(mode)}, not a {what}", file=file,
                            fix=f"pass the {what} itself (a regular file)")


def _refuse_size(size: int, *, file: str, what: str, limit: int) -> None:
    if size > limit:
        raise BadInputError(f"the {what} is {_mib(size)}; at most {_mib(limit)} is read",
                            file=file, fix=f"pass the {what} itself (is this the right file?)")


def check_input_file(path: str | Path, *, what: str, limit: int = MAX_INPUT_BYTES) -> Path:
    """The path, after checking that it is an existing regular file of at most ``limit`` bytes.

    For readers that hand the path to a library that opens it itself (``csv``, ``pandas``).
    ``what`` names the kind of file in messages ("cluster file", "plan").
    """
    path = Path(path)
    file = str(path)
    try:
        info = os.stat(path)  # follows symlinks: a link to /dev/zero is a device
    except FileNotFoundError:
        raise BadInputError(f"{what} not found", file=file,
                            fix="check the path (relative paths start at the current "
                                "directory)") from None
    except OSError as exc:
        raise BadInputError(f"cannot read the {what} ({exc.strerror})", file=file,
                            fix="check the path and its permissions") from None
    _refuse_mode(info.st_mode, file=file, what=what)
    _refuse_size(info.st_size, file=file, what=what, limit=limit)
    return path


def read_input_bytes(path: str | Path, *, what: str, limit: int = MAX_INPUT_BYTES) -> bytes:
    """The bytes of ``path``; ``BadInputError`` for a missing, non-regular or oversized file."""
    path = check_input_file(path, what=what, limit=limit)
    file = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise BadInputError(f"cannot read the {what} ({exc.strerror})", file=file,
                            fix="check the path and its permissions") from None
    with os.fdopen(fd, "rb") as fh:
        _refuse_mode(os.fstat(fh.fileno()).st_mode, file=file, what=what)
        try:
            data = fh.read(limit + 1)
        except OSError as exc:
            raise BadInputError(f"cannot read the {what} ({exc.strerror})", file=file,
                                fix="pass a readable file") from None
    _refuse_size(len(data), file=file, what=what, limit=limit)
    return data


def read_input_text(path: str | Path, *, what: str, limit: int = MAX_INPUT_BYTES) -> str:
    """The UTF-8 text of ``path``; a binary file (undecodable, or with NUL bytes) is refused."""
    data = read_input_bytes(path, what=what, limit=limit)
    file = str(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInputError(f"the {what} is not UTF-8 text (byte {exc.start} cannot be "
                            "decoded): a binary file?", file=file,
                            fix=f"pass the {what} itself, saved as UTF-8 text") from None
    if "\x00" in text:
        raise BadInputError(f"the {what} contains NUL bytes: a binary file?", file=file,
                            fix=f"pass the {what} itself, a text file")
    return text.removeprefix("\ufeff")
