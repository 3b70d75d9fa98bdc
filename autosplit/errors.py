"""Errors a user can act on, each mapped to a distinct exit code.

Bad input must never surface as a traceback: every loader raises one of these with a message
that names the file, the field and the fix, and the CLI turns it into a clean exit.
"""

from __future__ import annotations

__all__ = [
    "AutosplitError",
    "BadInputError",
    "NoFeasiblePlanError",
    "EXIT_OK",
    "EXIT_BAD_INPUT",
    "EXIT_NO_PLAN",
    "EXIT_RUNTIME",
]

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_NO_PLAN = 3
EXIT_RUNTIME = 4


class AutosplitError(Exception):
    """Base class: carries the exit code the CLI should return."""

    exit_code: int = EXIT_RUNTIME

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None,
                 fix: str | None = None) -> None:
        self.message = message
        self.file = file
        self.field = field
        self.fix = fix
        super().__init__(self.render())

    def render(self) -> str:
        """One readable paragraph: where, what, and how to fix it."""
        where = ""
        if self.file and self.field:
            where = f"{self.file}: field '{self.field}': "
        elif self.file:
            where = f"{self.file}: "
        elif self.field:
            where = f"field '{self.field}': "
        text = f"{where}{self.message}"
        if self.fix:
            text += f"\n  fix: {self.fix}"
        return text


class BadInputError(AutosplitError):
    """The user's input (YAML, model file, plan, options) is malformed or inconsistent."""

    exit_code = EXIT_BAD_INPUT


class NoFeasiblePlanError(AutosplitError):
    """Input is valid but no plan fits; the message gives the reason in numbers."""

    exit_code = EXIT_NO_PLAN
