"""Validation of user-facing values, in one place: one function per kind of quantity.

Each check returns the value (converted where that is lossless) or raises ``UsageError``
with one line that names the problem and the fix. ``name`` is how the caller refers to the
value ('weight_sparsity' from Python, empty where the command line already names the flag).
The command line parses text with :func:`parse`, which applies the same checks.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable

from duogpt.errors import UsageError


def _label(name: str, value) -> str:
    return f"{name} {value!r}" if name else repr(value)


def _must(name: str, value, requirement: str) -> UsageError:
    return UsageError(f"{name} must be {requirement}, got {value!r}" if name else f"{value!r} must be {requirement}")


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def fraction(name: str, value) -> float:
    """A fraction in [0, 1): sparsities."""
    if not (_is_number(value) and math.isfinite(value) and 0.0 <= value < 1.0):
        raise UsageError(f"{_label(name, value)} is outside [0, 1): pass a fraction such as 0.5")
    return float(value)


def positive_int(name: str, value) -> int:
    """An integer >= 1: counts and sizes."""
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise _must(name, value, "a positive integer")
    return value


def nonnegative(name: str, value) -> float:
    """A finite number >= 0: scales and dampening."""
    if not (_is_number(value) and math.isfinite(value) and value >= 0):
        raise _must(name, value, "a finite non-negative number")
    return float(value)


def positive(name: str, value) -> float:
    """A finite number > 0: temperatures."""
    if not (_is_number(value) and math.isfinite(value) and value > 0):
        raise _must(name, value, "a finite number > 0")
    return float(value)


def probability_mass(name: str, value) -> float:
    """A number in (0, 1]: nucleus sampling's top-p."""
    if not (_is_number(value) and math.isfinite(value) and 0 < value <= 1):
        raise _must(name, value, "in (0, 1]")
    return float(value)


def speedup(name: str, value) -> float | None:
    """None (not set), or a number above 1: an estimated decode speedup."""
    if value is None:
        return None
    if not (_is_number(value) and math.isfinite(value) and value > 1):
        raise _must(name, value, "a number above 1 (an estimated decode speedup)")
    return float(value)


def integer(name: str, value) -> int:
    """Any integer: seeds."""
    if not (isinstance(value, int) and not isinstance(value, bool)):
        raise _must(name, value, "an integer")
    return value


def text(name: str, value) -> str:
    """A non-empty string: sources, patterns."""
    if not (isinstance(value, str) and value):
        raise _must(name, value, "a non-empty string")
    return value


def flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise _must(name, value, "true or false")
    return value


def one_of(name: str, value, choices: Iterable) -> object:
    choices = tuple(choices)
    if value not in choices:
        raise UsageError(f"unknown {_label(name, value)}: use one of {', '.join(map(str, choices))}")
    return value


_CONVERT: dict[Callable, Callable[[str], object]] = {
    fraction: float,
    nonnegative: float,
    positive: float,
    probability_mass: float,
    positive_int: int,
    integer: int,
    speedup: float,
}


def parse(check: Callable) -> Callable[[str], object]:
    """An argparse ``type`` that converts the text and applies ``check`` (errors as argparse's)."""
    convert = _CONVERT.get(check, str)

    def parse_text(raw: str):
        try:
            value = convert(raw)
        except ValueError:
            kind = "an integer" if convert is int else "a number"
            raise argparse.ArgumentTypeError(f"{raw!r} is not {kind}") from None
        try:
            return check("", value)
        except UsageError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse_text.__name__ = check.__name__  # argparse names the type in some messages
    return parse_text
