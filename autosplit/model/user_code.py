"""Run code from a user's model file and turn its failures into ``BadInputError``.

A model file is code we did not write: any call into it can raise. The user must see which
function failed, the exception type and message, and the line of *their* file — never a
traceback through autosplit or PyTorch internals.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from autosplit.errors import AutosplitError, BadInputError

__all__ = ["describe_exception", "call_user"]

T = TypeVar("T")


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def describe_exception(exc: BaseException, path: str) -> str:
    """``"Type: message (line N: code)"``, pointing at the deepest frame inside ``path``."""
    text = f"{type(exc).__name__}: {exc}".rstrip(": ")
    if isinstance(exc, SyntaxError) and exc.filename and _same_file(exc.filename, path):
        code = (exc.text or "").strip()
        where = f"line {exc.lineno}" + (f": {code}" if code else "")
        return f"SyntaxError: {exc.msg} ({where})"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if _same_file(f.filename, path)]
    if frames:
        frame = frames[-1]
        code = (frame.line or "").strip()
        text += f" (line {frame.lineno}" + (f": {code})" if code else ")")
    return text


def call_user(fn: Callable[..., T], *args: Any, path: str, what: str, fix: str,
              **kwargs: Any) -> T:
    """Call ``fn`` from the user's file; any exception becomes a ``BadInputError``.

    ``what`` names the step (``"build_model(size='70b')"``) and ``fix`` says what to change.
    A ``ValueError`` is how a model file refuses its arguments on purpose (a sequence longer
    than its positions, an unknown size), so its own message is the fix to follow.
    ``AutosplitError`` raised from inside (e.g. by our own helpers) passes through unchanged.
    """
    try:
        return fn(*args, **kwargs)
    except AutosplitError:
        raise
    except Exception as exc:  # noqa: BLE001 - user code may raise anything
        if isinstance(exc, ValueError):
            fix = ("the model file refused these arguments: do what its message says "
                   "(model arguments with -a KEY=VALUE, the sequence length with --seq-len)")
        raise BadInputError(f"{what} failed: {describe_exception(exc, path)}", file=path,
                            fix=fix) from None
