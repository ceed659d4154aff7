"""Command-line flags from commented dataclasses: one absl flag per field, its help the field's trailing comment.

Every CLI's settings are the fields of a dataclass, written one commented line each: `Config` (config.py) holds
the training hyperparameters, and a CLI with settings of its own keeps them in its `Options` dataclass the same
way (explore, evaluate, bench, scale_bench). `define_flags` turns a dataclass into flags (the type from the
annotation, the default from the field, the help from the comment, continued on comment lines aligned under
it); `read_flags` turns the parsed flags back into an instance. Only a CLI's `main()` reads flags: it calls
`read_flags` and hands the Config or Options to the library, which never sees absl's FLAGS.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import textwrap
import tokenize
import types
import typing
from typing import Any, Iterable, Mapping, Sequence, TypeVar

from absl import flags

from dcgan_tf.config import NOT_FLAGS, Config

# The flags defined here belong to the CLI that asks for them: `--help` lists a CLI's own flags by the module
# that defined them, so this module steps aside (absl then names the caller's module).
flags.disclaim_key_flags()

T = TypeVar("T")

# Config fields that are flags: all but what the program fills in itself.
CONFIG_FLAGS = tuple(f.name for f in dataclasses.fields(Config) if f.name not in NOT_FLAGS)


class FlagError(ValueError):
    """A flag value that cannot be read as its field's type; the message names the flag."""


def flag_name(field: str) -> str:
    """The --flag of a field: its name without a trailing underscore (`from_` is --from)."""
    return field.rstrip("_")


@functools.cache
def field_help(cls: type) -> dict[str, str]:
    """Each field's trailing comment in the class's source, joined with the comment lines aligned under it."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source (a frozen install): flags keep their names as help
        return {}
    class_def = ast.parse(source).body[0]
    ends = {node.target.id: node.end_lineno for node in class_def.body
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)}
    comments = {}  # line -> (column, the line holds only the comment, text)
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            row, column = token.start
            comments[row] = (column, not token.line[:column].strip(), token.string.lstrip("#").strip())
    helps = {}
    for name, line in ends.items():
        if line not in comments or comments[line][1]:
            continue
        column, _, text = comments[line]
        parts, row = [text], line + 1
        while row in comments and comments[row][1] and comments[row][0] == column:  # a continuation
            parts.append(comments[row][2])
            row += 1
        helps[name] = " ".join(parts)
    return helps


def _flag_type(hint: Any) -> tuple[type, type | None]:
    """(bool/int/float/str/list/tuple, the element type of a list/tuple) of an annotation; X | None is X."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(args) == 1:
            return _flag_type(args[0])
    origin = typing.get_origin(hint)
    if origin in (list, tuple):
        element = typing.get_args(hint)[0] if typing.get_args(hint) else str
        if element in (int, float, str):
            return origin, element
    if hint in (bool, int, float, str):
        return hint, None
    raise TypeError(f"no flag type for the annotation {hint!r}")


def _default(field: dataclasses.Field) -> Any:
    """The field's default value."""
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    raise TypeError(f"field {field.name!r} has no default, so its flag would have none")


def _as_text(value: Any) -> str:
    """A list element as a flag's default shows it (1.0 as 1, 1e-05 as 1e-05)."""
    if isinstance(value, float) and float(f"{value:g}") == value:
        return f"{value:g}"
    return str(value)


def _fields(cls: type, names: Iterable[str] | None, *named: Mapping[str, Any] | None) -> list[dataclasses.Field]:
    """The dataclass fields called `names` (all if None); a clear error for a name the class lacks."""
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    names = list(by_name) if names is None else list(names)
    unknown = sorted({n for n in [*names, *(k for m in named if m for k in m)] if n not in by_name})
    if unknown:
        raise ValueError(f"{cls.__name__} has no fields {unknown}")
    return [by_name[n] for n in names]


def define_flags(cls: type, fields: Iterable[str] | None = None, *, defaults: Mapping[str, Any] | None = None,
                 helps: Mapping[str, str] | None = None, choices: Mapping[str, Sequence[str]] | None = None,
                 flag_values: flags.FlagValues | None = None) -> None:
    """Define one absl flag per field of the dataclass `cls` (or of `fields`).

    The flag's type is the field's annotation (bool, int, float, str, X | None, a list or tuple of int/float/str:
    a comma-separated list flag), its default the field's unless `defaults` names another, its help the
    field's comment unless `helps` gives one; a field in `choices` is an enum flag of those values.
    """
    defaults, helps, choices = defaults or {}, helps or {}, choices or {}
    hints, comments = typing.get_type_hints(cls), field_help(cls)
    registry = {} if flag_values is None else {"flag_values": flag_values}
    for field in _fields(cls, fields, defaults, helps, choices):
        name = flag_name(field.name)
        default = defaults[field.name] if field.name in defaults else _default(field)
        text = helps.get(field.name) or comments.get(field.name, field.name)
        kind, _ = _flag_type(hints[field.name])
        if field.name in choices:
            flags.DEFINE_enum(name, default, list(choices[field.name]), text, **registry)
        elif kind in (list, tuple):
            flags.DEFINE_list(name, None if default is None else [_as_text(v) for v in default], text, **registry)
        elif kind is bool:
            flags.DEFINE_bool(name, default, text, **registry)
        elif kind is int:
            flags.DEFINE_integer(name, default, text, **registry)
        elif kind is float:
            flags.DEFINE_float(name, default, text, **registry)
        else:
            flags.DEFINE_string(name, default, text, **registry)


def _read(name: str, value: Any, hint: Any) -> Any:
    """A parsed flag's value as the field's type (a list flag's strings as numbers where the field says so)."""
    kind, element = _flag_type(hint)
    if value is None or kind not in (list, tuple):
        return value
    try:
        return kind(element(v) for v in value)
    except ValueError:
        what = "integers" if element is int else "numbers"
        raise FlagError(f"--{name}={','.join(value)} must be comma-separated {what}") from None


def read_flags(cls: type[T], flag_values: flags.FlagValues, fields: Iterable[str] | None = None,
               base: T | None = None) -> T:
    """An instance of `cls` from parsed flags: `fields` (all if None) from the flags, the rest from `base`."""
    hints = typing.get_type_hints(cls)
    values = {f.name: _read(flag_name(f.name), flag_values[flag_name(f.name)].value, hints[f.name])
              for f in _fields(cls, fields)}
    return cls(**values) if base is None else dataclasses.replace(base, **values)


def define_config_flags(fields: Iterable[str] | None = None, *, defaults: Mapping[str, Any] | None = None,
                        helps: Mapping[str, str] | None = None, flag_values: flags.FlagValues | None = None) -> None:
    """One flag per Config field (every hyperparameter, or `fields`), documented by config.py's comments."""
    define_flags(Config, CONFIG_FLAGS if fields is None else fields, defaults=defaults, helps=helps,
                 flag_values=flag_values)


def config_from_flags(flag_values: flags.FlagValues, fields: Iterable[str] | None = None,
                      base: Config | None = None) -> Config:
    """The Config the flags give: `fields` (every flag field if None) from the flags, the rest from `base`."""
    return read_flags(Config, flag_values, CONFIG_FLAGS if fields is None else fields, base)
