"""Type and range checks of config fields, run in each config's ``__post_init__``: a config
built from Python, a TOML recipe or ``--set`` is refused before any work, in one line that
names the field, the value and what is allowed (``unlearn.lr = 'fast': expected a number > 0``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Rule:
    ok: Callable[[Any], bool]
    says: str  # what is allowed: "> 0" after "expected a number"
    names_type: bool = False  # says all there is to say ("one of 'npo', 'rmu'"): no "a string" before it


def above(low: float) -> Rule:
    return Rule(lambda v: v > low, f"> {low}")


def at_least(low: float) -> Rule:
    return Rule(lambda v: v >= low, f"≥ {low}")


def between(low: float, high: float) -> Rule:
    return Rule(lambda v: low <= v <= high, f"in [{low}, {high}]")


def one_of(*allowed) -> Rule:
    return Rule(lambda v: v in allowed, "one of " + ", ".join(repr(a) for a in allowed), names_type=True)


def check_fields(cfg, section: str, rules: dict[str, Rule]) -> None:
    """Check every field of the dataclass ``cfg`` against its annotation, and those in ``rules``
    against their rule (for a tuple field, every item). Lists given for tuple fields (TOML,
    ``--set``) become tuples, so configs compare and hash alike however they were written."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value, hint = getattr(cfg, f.name), hints[f.name]
        if isinstance(value, list) and typing.get_origin(hint) is tuple:
            value = tuple(value)
            object.__setattr__(cfg, f.name, value)  # frozen dataclasses: the one sanctioned way in
        rule, many = rules.get(f.name), typing.get_origin(hint) is tuple
        if not _has_type(value, hint) or (rule and not all(rule.ok(v) for v in (value if many else (value,)))):
            raise ValueError(f"{section}.{f.name} = {value!r}: expected {_expected(hint, rule, many)}")


def _expected(hint, rule: Rule | None, many: bool) -> str:
    if rule is None:
        return _describe(hint)
    if rule.names_type and not many:
        return rule.says
    return f"{_describe(hint)}{', each' if many else ''} {rule.says}"


def _has_type(value, hint) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, h) for h in typing.get_args(hint))
    if origin is tuple:
        return isinstance(value, tuple) and all(_has_type(v, typing.get_args(hint)[0]) for v in value)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:  # True is an int to Python, never to a user
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # not NaN
    return isinstance(value, hint)


def _describe(hint) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if origin is tuple:
        return f"a list of {_describe(typing.get_args(hint)[0]).split(' ', 1)[1]}s"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(hint, f"a {getattr(hint, '__name__', hint)}")
