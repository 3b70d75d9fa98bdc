"""Option parsing shared by several commands."""

from __future__ import annotations

from autosplit.errors import BadInputError

__all__ = ["check_choice", "parse_model_args", "parse_int_list"]


def check_choice(value: str, choices: tuple[str, ...] | list[str], option: str) -> str:
    """``value`` if it is one of ``choices``; else exit 2 naming ``option`` and the choices
    (a typo such as ``--dtype fp8`` would otherwise surface late, or be stored as given)."""
    if value not in choices:
        raise BadInputError(f"{value!r} is not a valid choice", field=option,
                            fix=f"use one of: {', '.join(choices)}")
    return value


def parse_model_args(items: list[str] | None) -> dict[str, str]:
    """``["size=70b", "layers=4"]`` → ``{"size": "70b", "layers": "4"}``."""
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise BadInputError(f"model argument {item!r} is not KEY=VALUE",
                                field="--model-arg", fix="write it as --model-arg size=1.3b")
        k, v = item.split("=", 1)
        if not k.strip():
            raise BadInputError(f"model argument {item!r} has no KEY",
                                field="--model-arg", fix="write it as --model-arg size=1.3b")
        out[k.strip()] = v.strip()
    return out


def parse_int_list(text: str, *, option: str, high: int = 1 << 20) -> tuple[int, ...]:
    """``"1,2,4"`` → ``(1, 2, 4)``; every value from 1 to ``high``."""
    try:
        vals = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise BadInputError(f"{text!r} is not a comma-separated list of integers",
                            field=option, fix=f"write it as {option} 1,2,4,8") from None
    if not vals or any(v < 1 for v in vals):
        raise BadInputError(f"{text!r} must list positive integers", field=option,
                            fix=f"write it as {option} 1,2,4,8")
    if any(v > high for v in vals):
        raise BadInputError(f"{text!r}: {max(vals)} is outside the allowed range [1, {high}]",
                            field=option, fix=f"write it as {option} 1,2,4,8")
    return vals
