"""Ingest on the meta device without importing ``torch._dynamo``.

Building a model on the meta device and running its forward there go through PyTorch's Python
references (parameter initialisation's ``normal_``, ``arange``…), and some of them are wrapped
by ``torch._compile._disable_dynamo``, which imports ``torch._dynamo`` on its first call to
disable compilation inside — 0.9-1.5 s of a cold search on a 2-core machine, for work that
compiles nothing. The wrapper caches the disabled function on the wrapped one; setting that
cache to the function itself for the duration of an ingestion skips the import and changes
nothing else (nothing is compiled there).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FunctionType

__all__ = ["without_dynamo_import"]

#: The attribute ``torch._compile._disable_dynamo`` caches a function's dynamo-disabled form
#: in; set, the first call does not import ``torch._dynamo``.
_DISABLED_ATTR = "__dynamo_disable"


def _lazy_dynamo_targets() -> list[FunctionType]:
    """Every function PyTorch wrapped with ``torch._compile._disable_dynamo`` that has not
    been called yet (its wrapper would import ``torch._dynamo``): the wrappers share one code
    object, and the wrapped function is their closure's ``fn``."""
    import gc

    try:  # PyTorch's internals: where they differ, ingestion just imports dynamo as before
        from torch._compile import _disable_dynamo

        code = _disable_dynamo(lambda: None).__code__
        slot = code.co_freevars.index("fn")
    except (ImportError, AttributeError, TypeError, ValueError):
        return []
    out = []
    for obj in gc.get_objects():
        if type(obj) is FunctionType and obj.__code__ is code and obj.__closure__:
            fn = obj.__closure__[slot].cell_contents
            # Plain functions only, read through their __dict__ (no attribute hooks run).
            if isinstance(fn, FunctionType) and _DISABLED_ATTR not in fn.__dict__:
                out.append(fn)
    return out


@contextmanager
def without_dynamo_import() -> Iterator[None]:
    """Within: no ``torch._dynamo`` import by PyTorch's dynamo-disabling wrappers; after: the
    wrappers as they were (a later compile disables dynamo in them as usual)."""
    if "torch._dynamo" in sys.modules:
        yield
        return
    marked = _lazy_dynamo_targets()
    for fn in marked:
        fn.__dict__[_DISABLED_ATTR] = fn
    try:
        yield
    finally:
        for fn in marked:
            if fn.__dict__.get(_DISABLED_ATTR) is fn:
                del fn.__dict__[_DISABLED_ATTR]
