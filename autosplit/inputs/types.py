"""Field types shared by the YAML file formats (cluster and chip files).

YAML arrives as Python objects, validated in pydantic's lax mode; these types put back the
strictness a hand-written file needs (``yes`` is not a number, ``8.5`` devices is not a count)
while accepting what YAML 1.1 gets wrong on its own (``1e3`` is read as a string).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field, StrictInt, StrictStr, StringConstraints
from pydantic_core import PydanticCustomError

__all__ = ["NAME_PATTERN", "Name", "Text", "Number", "Positive", "NonNegative", "Fraction",
           "bounded_count", "lower_case"]

#: Names of chips and nodes: what a file name, a Kubernetes label and a shell accept.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


def _number(value: Any) -> Any:
    """Numbers as written; numeric text (YAML 1.1 reads ``1e3`` as text); nothing else."""
    if isinstance(value, bool) or value is None:
        raise PydanticCustomError("float_type", "Input should be a valid number")
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise PydanticCustomError("float_type", "Input should be a valid number") from None
    return value


def lower_case(value: Any) -> Any:
    """Choices are matched case-insensitively (``NVLink`` is ``nvlink``)."""
    return value.strip().lower() if isinstance(value, str) else value


# The YAML conversion comes last in each ``Annotated``: pydantic then applies the bounds to the
# float itself, and publishes them as JSON Schema keywords (exclusiveMinimum, maximum).
_FROM_YAML = BeforeValidator(_number)
#: A finite number (NaN and infinity are refused).
Number = Annotated[float, Field(allow_inf_nan=False), _FROM_YAML]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False), _FROM_YAML]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False), _FROM_YAML]
#: A fraction of a peak: (0, 1].
Fraction = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False), _FROM_YAML]
#: Non-empty text, surrounding blanks removed.
Text = Annotated[StrictStr, StringConstraints(strip_whitespace=True, min_length=1)]
Name = Annotated[StrictStr, StringConstraints(pattern=NAME_PATTERN)]


def bounded_count(high: int) -> Any:
    """A whole number from 1 to ``high`` (bounded, so an absurd size is refused at once)."""
    return Annotated[StrictInt, Field(ge=1, le=high)]
