"""The ``autosplit`` command line.

Each sub-command lives in its own module with a ``register(app)`` function; this file only
wires them together and turns ``AutosplitError`` into a clean message and exit code, so a
user never sees a traceback for bad input.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from autosplit.errors import AutosplitError

__all__ = ["app", "main"]

app = typer.Typer(
    name="autosplit",
    help="Automatic parallel-strategy search for heterogeneous accelerator clusters.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_err = Console(stderr=True)


def _register_commands() -> None:
    # Imported here so that ``autosplit --help`` stays fast and one broken optional command
    # module cannot take the others down at import time.
    from autosplit.cli import (
        bench_cmd,
        chips_cmd,
        evaluate_cmd,
        export_cmd,
        profile_cmd,
        report_cmd,
        run_cmd,
        search_cmd,
    )

    for module in (search_cmd, evaluate_cmd, chips_cmd, report_cmd, export_cmd, run_cmd,
                   profile_cmd, bench_cmd):
        module.register(app)


@app.command("version")
def _version() -> None:
    """Print the autosplit version."""
    from autosplit import __version__

    typer.echo(__version__)


_register_commands()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    try:
        app(args=argv, prog_name="autosplit")
    except AutosplitError as exc:
        _err.print(f"[bold red]error:[/] {exc.render()}", highlight=False, soft_wrap=True)
        return exc.exit_code
    except SystemExit as exc:  # typer/click exit (usage errors exit 2)
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except KeyboardInterrupt:
        _err.print("interrupted")
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
