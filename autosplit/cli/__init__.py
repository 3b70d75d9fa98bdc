"""The ``autosplit`` command line.

Each sub-command lives in its own module with a ``register(app)`` function; this file only
wires them together and turns ``AutosplitError`` into a clean message and exit code, so a
user never sees a traceback for bad input.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import Any

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


def _print_version(value: bool) -> None:
    if value:
        from autosplit import __version__

        typer.echo(f"autosplit {__version__}")
        raise typer.Exit(0)


@app.callback()
def _options(version: bool = typer.Option(False, "--version", is_eager=True,
                                          callback=_print_version,
                                          help="Print the version and exit.")) -> None:
    """Automatic parallel-strategy search for heterogeneous accelerator clusters."""


_register_commands()


def _metavar(param: Any) -> str:
    """What ``--help`` shows after an option: nothing for a flag, else a plain word."""
    if getattr(param, "is_flag", False):
        return ""
    if param.param_type_name == "argument":
        return (param.name or "value").upper()
    bare = param.bare_type() if hasattr(param, "bare_type") else "str"
    bare = bare.removeprefix("list[").removesuffix("]")
    words = {"int": "INTEGER", "float": "NUMBER", "Path": "PATH", "bool": "BOOLEAN"}
    return next((w for k, w in words.items() if k in bare), "TEXT")


def _plain_metavars(command: Any) -> None:
    """``--help`` without placeholders such as ``<bool>`` or ``<list[Path]>``: each option
    names the kind of value it takes (``PATH``, ``NUMBER``), a flag nothing."""
    help_option = None
    if hasattr(command, "get_help_option"):
        help_option = command.get_help_option(SimpleNamespace(help_option_names=["--help"]))
    for param in (*command.params, *([help_option] if help_option else [])):
        if param.metavar is None:
            param.metavar = _metavar(param)
        if param.param_type_name == "argument":  # its name already says what it is
            param.display_type_rich = lambda ctx: ""
    for sub in getattr(command, "commands", {}).values():
        _plain_metavars(sub)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    command = typer.main.get_command(app)
    _plain_metavars(command)
    try:
        command.main(args=argv, prog_name="autosplit")
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
