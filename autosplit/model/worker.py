"""The child process of an isolated ingestion: ``python -m autosplit.model.worker RESULT``.

Reads the request (model file, model args, sequence length, dtype) as JSON on standard input,
ingests the model and writes ``{"profile": ...}`` or ``{"error": ...}`` to the file ``RESULT``
(never to standard output, which the model file may print to). A model file that calls
``sys.exit`` is reported as such; one that ends the process (``os._exit``, a crash) or hangs
leaves no result, and the parent (``autosplit.model.isolated``) says what happened.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from typing import Any

from autosplit.atomic import atomic_write_text
from autosplit.errors import AutosplitError

__all__ = ["ingest_request", "main"]


def ingest_request(request: dict[str, Any]) -> dict[str, Any]:
    """The result record of one request: the profile, or the error a user acts on."""
    from autosplit.model.ingest import ingest_model

    path = str(request["path"])
    try:
        profile = ingest_model(path, model_args=dict(request["model_args"]),
                               seq_len=int(request["seq_len"]), dtype=str(request["dtype"]))
    except AutosplitError as exc:
        return {"error": {"message": exc.message, "file": exc.file, "field": exc.field,
                          "fix": exc.fix, "exit_code": exc.exit_code}}
    except SystemExit as exc:
        return {"error": {"message": f"the model file called sys.exit({exc.code!r}) while "
                                     "it was imported or built", "file": path,
                          "field": None, "exit_code": 2,
                          "fix": "a model file must not exit: remove the sys.exit / exit() "
                                 "call (guard scripts with `if __name__ == \"__main__\":`)"}}
    return {"profile": asdict(profile)}


def main(argv: list[str]) -> int:
    """Entry point of the child: one request on stdin, one result file."""
    request = json.loads(sys.stdin.read())
    result = ingest_request(request)
    atomic_write_text(argv[0], json.dumps(result))
    return 0


if __name__ == "__main__":  # pragma: no cover - run by autosplit.model.isolated
    sys.exit(main(sys.argv[1:]))
