"""Ingest a model file in a child process with a time limit.

Why: a model file is code (docs/model-files.md, "Trust"), and code can call ``sys.exit`` or
``os._exit`` at import, loop forever, or crash the interpreter. Run in the CLI's own process,
the first ended the command with exit 0 and no message, the second hung it. Here the file is
imported and measured by ``autosplit.model.worker`` in a child process of its own session;
the parent waits at most ``timeout_s`` (``$AUTOSPLIT_INGEST_TIMEOUT_S``, default 300 s), kills
the child's whole process group on expiry, and turns every way the child can end into a
``BadInputError`` (exit 2) naming the file and what happened, with the last lines the child
printed. The ingestion cache (``autosplit.model.cache``) sits in front of this, so a warm
command starts no child at all.

This isolates failures, not privileges: the child runs with the user's rights, as a
``setup.py`` does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from autosplit.errors import AutosplitError, BadInputError, NoFeasiblePlanError
from autosplit.model.types import ModelProfile

__all__ = ["DEFAULT_TIMEOUT_S", "TIMEOUT_ENV", "ingest_timeout_s", "ingest_isolated"]

DEFAULT_TIMEOUT_S = 300.0
TIMEOUT_ENV = "AUTOSPLIT_INGEST_TIMEOUT_S"
_TAIL_LINES = 8


def ingest_timeout_s() -> float:
    """The time limit of one ingestion, from ``$AUTOSPLIT_INGEST_TIMEOUT_S`` if set."""
    text = os.environ.get(TIMEOUT_ENV, "")
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise BadInputError(f"{text!r} is not a positive number of seconds", field=TIMEOUT_ENV,
                            fix=f"export {TIMEOUT_ENV}=300 (or unset it)")
    return value


def _tail(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(f"    {line}" for line in lines[-_TAIL_LINES:])


def _with_output(message: str, output: str) -> str:
    tail = _tail(output)
    return message + (f"; its last output:\n{tail}" if tail else " (it printed nothing)")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop the child and anything it started (it leads its own process group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()


def _run_child(request: dict[str, object], result: Path, timeout_s: float
               ) -> tuple[int, str]:
    """Run the worker; its exit code and what it printed (stdout and stderr together)."""
    proc = subprocess.Popen([sys.executable, "-m", "autosplit.model.worker", str(result)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(json.dumps(request).encode(), timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out = proc.stdout.read() if proc.stdout else b""
        path = str(request["path"])
        raise BadInputError(_with_output(
            f"ingesting the model did not finish within {timeout_s:g} s (an endless loop at "
            "import or in build_model/example_batch?); it was stopped",
            out.decode(errors="replace")), file=path,
            fix=f"fix the model file; if it is only slow, raise the limit: export "
                f"{TIMEOUT_ENV}={max(2 * timeout_s, 600):g}") from None
    except BaseException:
        _kill_group(proc)
        raise
    return proc.returncode, out.decode(errors="replace")


def _error_from(record: dict[str, object]) -> AutosplitError:
    kind = NoFeasiblePlanError if record.get("exit_code") == 3 else BadInputError
    if record.get("exit_code") not in (2, 3):
        kind = AutosplitError
    return kind(str(record.get("message", "")), file=record.get("file"),  # type: ignore[arg-type]
                field=record.get("field"), fix=record.get("fix"))  # type: ignore[arg-type]


def _ended(path: str, code: int, output: str) -> BadInputError:
    if code < 0:
        try:
            how = f"was killed by signal {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    else:
        how = f"ended with exit code {code} before it finished (os._exit or a crash?)"
    return BadInputError(_with_output(f"the process ingesting the model {how}", output),
                         file=path, fix="a model file must not end the process: remove the "
                                        "os._exit / exit call, or fix what crashes it")


def ingest_isolated(path: str, *, model_args: dict[str, str], seq_len: int, dtype: str,
                    timeout_s: float | None = None) -> ModelProfile:
    """``autosplit.model.ingest.ingest_model`` in a child process with a time limit."""
    limit = ingest_timeout_s() if timeout_s is None else timeout_s
    request = {"path": path, "model_args": model_args, "seq_len": seq_len, "dtype": dtype}
    with tempfile.TemporaryDirectory(prefix="autosplit-ingest-") as tmp:
        result = Path(tmp) / "result.json"
        code, output = _run_child(request, result, limit)
        if not result.is_file():
            raise _ended(path, code, output)
        record = json.loads(result.read_text(encoding="utf-8"))
    if "error" in record:
        raise _error_from(record["error"])
    return ModelProfile.from_dict(record["profile"])
