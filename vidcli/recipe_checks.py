"""Recipe value checks: type conversion, [ge, le] ranges and did-you-mean suggestions.

Every error names where the value came from (file, `--set` item) so the user can fix it there.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal

from vidcli.errors import RecipeError


def check_value(value: Any, hint: Any, where: str) -> Any:
    """Return `value` converted to `hint` (int -> float only), or raise naming the expected type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return check_value(value, inner[0], where)
    if origin is Literal:
        if value not in args:
            allowed = ", ".join(repr(a) for a in args)
            raise RecipeError(f"{where} = {value!r}: expected one of {allowed}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"{where} = {value!r}: expected a list of {_type_name(args[0])}")
        return [check_value(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{where} = {value!r}: expected a table")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{where} = {value!r}: expected a bool (true or false)")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{where} = {value!r}: expected an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{where} = {value!r}: expected a number (float)")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise RecipeError(f"{where} = {value!r}: expected a string")
        return value
    raise AssertionError(f"recipe type {hint} not handled")


def check_range(value: Any, f: dataclasses.Field, where: str) -> None:
    """Raise when `value` lies outside the field's `ge`/`le` metadata bounds."""
    ge, le = f.metadata.get("ge"), f.metadata.get("le")
    if value is None or (ge is None and le is None):
        return
    if (ge is not None and value < ge) or (le is not None and value > le):
        lo = "-inf" if ge is None else f"{ge:g}"
        hi = "inf" if le is None else f"{le:g}"
        raise RecipeError(f"{where} = {value!r}: out of range, allowed [{lo}, {hi}]")


def suggest(word: str, choices: typing.Iterable[str]) -> str:
    """` (did you mean 'x'?)` for the closest choice, or "" when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))
