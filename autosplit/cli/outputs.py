"""Output paths, checked before the work starts; ``-`` means standard output.

Why: a search of several minutes that ends in ``IsADirectoryError`` because ``-o`` named a
folder wastes the user's time and shows a traceback; a report written before its chart folder
turns out to be a file leaves a partial result behind. Every command checks each output path
it was given first (a file path must not be a folder, a folder path must not be a file, the
nearest existing parent must be a writable folder), then writes with ``autosplit.atomic`` at
the end, so a failing command leaves no file.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from autosplit.atomic import atomic_write_text
from autosplit.errors import BadInputError

__all__ = ["STDOUT", "OutputFile", "check_output_file", "check_output_folder", "write_output"]

#: The path that means "write to standard output".
STDOUT = "-"


@dataclass(frozen=True)
class OutputFile:
    """A checked output: a path, or standard output (``path is None``)."""

    path: Path | None

    @property
    def to_stdout(self) -> bool:
        return self.path is None

    def __str__(self) -> str:
        return "standard output" if self.path is None else str(self.path)


def _existing_parent(path: Path) -> Path:
    """The nearest ancestor of ``path`` that exists (the folder a write would create into)."""
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return parent


def _check_parent(path: Path, *, option: str) -> None:
    parent = _existing_parent(path)
    if not parent.is_dir():
        raise BadInputError(f"cannot create {path}: {parent} is a file, not a folder",
                            field=option, fix=f"pass {option} with a path inside a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BadInputError(f"cannot write into {parent} (permission denied)", field=option,
                            fix=f"pass {option} with a path in a writable folder")


def check_output_file(path: Path | str | None, *, option: str,
                      allow_stdout: bool = True) -> OutputFile | None:
    """``None`` for no output, the checked path, or standard output for ``-``."""
    if path is None:
        return None
    if str(path) == STDOUT:
        if not allow_stdout:
            raise BadInputError("this output cannot go to standard output", field=option,
                                fix=f"pass {option} with a file path")
        return OutputFile(None)
    path = Path(path)
    if path.is_dir():
        raise BadInputError(f"{path} is a folder, not a file", field=option,
                            fix=f"pass {option} {path / 'NAME'} (a file inside it)")
    if path.exists() and not path.is_file():
        raise BadInputError(f"{path} exists and is not a regular file", field=option,
                            fix=f"pass {option} with a new file path")
    _check_parent(path, option=option)
    return OutputFile(path)


def check_output_folder(path: Path | str | None, *, option: str) -> Path | None:
    """``None`` for no output, else the folder path (existing or to be created)."""
    if path is None:
        return None
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise BadInputError(f"{path} exists and is not a folder", field=option,
                            fix=f"pass {option} with a folder (it is created if missing)")
    if not path.exists():
        _check_parent(path, option=option)
    elif not os.access(path, os.W_OK | os.X_OK):
        raise BadInputError(f"cannot write into {path} (permission denied)", field=option,
                            fix=f"pass {option} with a writable folder")
    return path


def write_output(out: OutputFile, text: str) -> None:
    """Write ``text`` to the checked output, atomically for a file."""
    if out.path is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        atomic_write_text(out.path, text)
