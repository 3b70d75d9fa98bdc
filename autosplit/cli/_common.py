"""Option parsing shared by several commands."""

from __future__ import annotations

from autosplit.errors import BadInputError

__all__ = ["parse_model_args", "parse_int_list"]


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


def parse_int_list(text: str, *, option: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise BadInputError(f"{text!r} is not a comma-separated list of integers",
                            field=option, fix=f"write it as {option} 1,2,4,8") from None
    if not vals or any(v < 1 for v in vals):
        raise BadInputError(f"{text!r} must list positive integers", field=option,
                            fix=f"write it as {option} 1,2,4,8")
    return vals
