"""Command-line parsing straight from (possibly nested) config dataclasses.

    cfg = parse_config(GRPOConfig, description="GRPO on synthetic math")

Flag naming (one rule, no aliases to guess):
  * a top-level field ``lr_warmup`` is ``--lr-warmup`` (``--lr_warmup`` is accepted too);
  * a field of a nested dataclass is ``--<parent>.<field>``, e.g. ``model.hidden_size``
    is ``--model.hidden-size`` (``--model.hidden_size`` is accepted too; a section ``dr_grpo``
    is ``--dr-grpo.``). Nesting may go any depth: ``--a.b.c``.

Values:
  * int / float / str / pathlib.Path: as usual;
  * bool: ``--flag`` / ``--no-flag``, or ``--flag true|false`` (also yes/no, on/off, 1/0);
  * ``X | None`` / ``Optional[X]``: the string ``none`` (any case) gives None;
  * ``tuple[int, ...]``, ``tuple[int, int]``, ``list[str]``, ...: comma separated
    (``--sizes 1,2,3``; an empty string is the empty sequence);
  * ``Literal[...]``: the value must be one of the choices;
  * ``dict``: a JSON object (``--rope-scaling '{"type": "yarn", "factor": 4}'``).

Help text is the field's ``metadata={"help": ...}`` or else its attribute docstring (the
string literal written right under the field, the style used in ``minimind/config.py``),
followed by the default.

``--config run.json`` loads a JSON object (nested objects for nested dataclasses) whose
values override the dataclass defaults; flags on the command line override the file.
The dataclass' ``__post_init__`` runs on construction; a ``ValueError`` it raises is
reported through ``parser.error`` (usage + message, exit status 2).
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import enum
import inspect
import json
import sys
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

__all__ = ["parse_config", "build_parser", "config_to_dict"]

T = TypeVar("T")
_MISSING = dataclasses.MISSING
_TRUE = {"true", "yes", "y", "on", "1"}
_FALSE = {"false", "no", "n", "off", "0"}


# --------------------------------------------------------------------------- types


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (tp, False)."""
    origin = typing.get_origin(tp)
    if origin is Union or origin is types.UnionType:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        if len(args) == 1:
            return args[0], optional
        raise TypeError(f"unsupported union type {tp!r} (only X | None is supported)")
    return tp, False


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _scalar_converter(tp: Any):
    """A function str -> value for a non-container type, with a readable error."""
    if typing.get_origin(tp) is Literal:
        choices = typing.get_args(tp)

        def conv_literal(text: str):
            for c in choices:
                if isinstance(c, bool):
                    ok = text.strip().lower() in (_TRUE if c else _FALSE)
                else:
                    ok = text == str(c)
                if ok:
                    return c
            shown = ", ".join(repr(c) for c in choices)
            raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {shown})")

        return conv_literal
    if tp is bool:
        return _parse_bool
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        def conv_enum(text: str):
            for member in tp:
                if text in (member.name, str(member.value)):
                    return member
            shown = ", ".join(m.name for m in tp)
            raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {shown})")

        return conv_enum
    if tp in (int, float, str, Path):
        def conv(text: str):
            try:
                return tp(text)
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"expected {tp.__name__}, got {text!r}") from None

        return conv
    if tp is dict or typing.get_origin(tp) is dict:
        def conv_dict(text: str):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                raise argparse.ArgumentTypeError(f"expected a JSON object: {e}") from None
            if not isinstance(value, dict):
                raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
            return value

        return conv_dict
    raise TypeError(f"unsupported field type {tp!r}")


def _converter(tp: Any):
    """str -> value for any supported field type (Optional and sequences included)."""
    inner, optional = _strip_optional(tp)
    origin = typing.get_origin(inner)
    if origin in (tuple, list) or inner in (tuple, list):
        args = typing.get_args(inner)
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            elem_types, fixed = [args[0]], None
        elif origin is tuple and args:
            elem_types, fixed = list(args), len(args)
        else:
            elem_types, fixed = [args[0] if args else str], None
        convs = [_scalar_converter(t) for t in elem_types]
        container = tuple if (origin or inner) is tuple else list

        def conv_seq(text: str):
            parts = [p.strip() for p in text.split(",")] if text.strip() else []
            if fixed is not None and len(parts) != fixed:
                raise argparse.ArgumentTypeError(
                    f"expected {fixed} comma-separated values, got {len(parts)} in {text!r}")
            return container(convs[min(i, len(convs) - 1)](p) for i, p in enumerate(parts))

        base = conv_seq
    else:
        base = _scalar_converter(inner)
    if not optional:
        return base

    def conv_optional(text: str):
        return None if text.strip().lower() == "none" else base(text)

    return conv_optional


def _metavar(tp: Any) -> str:
    inner, optional = _strip_optional(tp)
    origin = typing.get_origin(inner)
    if origin is Literal:
        mv = "{" + ",".join(str(c) for c in typing.get_args(inner)) + "}"
    elif origin in (tuple, list) or inner in (tuple, list):
        mv = "A,B,..."
    elif inner is dict or origin is dict:
        mv = "JSON"
    elif isinstance(inner, type) and issubclass(inner, enum.Enum):
        mv = "{" + ",".join(m.name for m in inner) + "}"
    else:
        mv = getattr(inner, "__name__", "VALUE").upper()
    return mv + ("|none" if optional else "")


# --------------------------------------------------------------------------- help text


def _attribute_docstrings(cls: type) -> dict[str, str]:
    """Field name -> the string literal written right under it in the class body."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
            body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
        except (OSError, TypeError, SyntaxError, IndexError, AttributeError):
            continue
        for stmt, nxt in zip(body, body[1:]):
            if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                docs[stmt.target.id] = " ".join(inspect.cleandoc(nxt.value.value).split())
    return docs


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not _MISSING:
        return f.default
    if f.default_factory is not _MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return _MISSING


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, enum.Enum):
        return value.name
    return str(value)


# --------------------------------------------------------------------------- parser


def _init_fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if f.init]


def _nested_cls(tp: Any) -> type | None:
    inner, _ = _strip_optional(tp)
    return inner if isinstance(inner, type) and dataclasses.is_dataclass(inner) else None


def _add_fields(parser: argparse.ArgumentParser, cls: type, prefix: tuple[str, ...],
                group_title: str | None, base: Any = None) -> None:
    """Flags for `cls`'s fields; `base` is the enclosing field's default instance, so help shows the
    values a `default_factory` chose (the values the run uses), not the nested class's own."""
    docs = _attribute_docstrings(cls)
    group = parser.add_argument_group(group_title) if group_title else parser
    for f, tp in _init_fields(cls):
        path = prefix + (f.name,)
        sub = _nested_cls(tp)
        default = getattr(base, f.name) if base is not None else _default_of(f)
        if sub is not None:
            _add_fields(parser, sub, path, ".".join(path) + " (" + sub.__name__ + ")",
                        default if isinstance(default, sub) else None)
            continue
        dest = ".".join(path)
        flag = "--" + ".".join(p.replace("_", "-") for p in path)
        alias = "--" + dest if "_" in dest else None  # --hidden_size works too (hidden)
        help_text = f.metadata.get("help") or docs.get(f.name, "")
        help_text += (" " if help_text else "") + (
            "(required)" if default is _MISSING else f"(default: {_show(default)})")
        inner, optional = _strip_optional(tp)
        if inner is bool:  # --flag, --flag true|false (|none if Optional), --no-flag
            kw = dict(nargs="?", const=True, metavar="true|false" + ("|none" if optional else ""))
        else:
            kw = dict(metavar=_metavar(tp))
        for names, text in ((flag, help_text.replace("%", "%%")), (alias, argparse.SUPPRESS)):
            if names:
                group.add_argument(names, dest=dest, type=_converter(tp),
                                   default=argparse.SUPPRESS, help=text, **kw)
        if inner is bool:
            neg = "--" + ".".join([p.replace("_", "-") for p in prefix] + ["no-" + f.name.replace("_", "-")])
            group.add_argument(neg, dest=dest, action="store_false",
                               default=argparse.SUPPRESS, help=f"same as {flag} false")


def build_parser(cls: type, description: str | None = None) -> argparse.ArgumentParser:
    """The argparse parser ``parse_config`` uses (handy for ``--help`` text or extension)."""
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"parse_config needs a dataclass type, got {cls!r}")
    if any(f.name == "config" for f, _ in _init_fields(cls)):
        raise TypeError(f"{cls.__name__} has a field named 'config', which clashes with --config")
    doc = description
    if doc is None and cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("):
        doc = inspect.cleandoc(cls.__doc__)
    parser = argparse.ArgumentParser(description=doc, allow_abbrev=False)
    parser.add_argument("--config", metavar="PATH.json", default=None,
                        help="JSON file of values (nested objects for nested sections); "
                             "command-line flags override it")
    _add_fields(parser, cls, (), None)
    return parser


# --------------------------------------------------------------------------- building


def _json_kind(value: Any) -> str:
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)


def _coerce_json(value: Any, tp: Any, where: str) -> Any:
    """A JSON value checked against the field type with the flags' rules: CLI-style strings go
    through the flag's converter; otherwise the JSON type must fit (2.5 or true is no int, a list is
    no int, lists become tuples, every element is checked)."""
    inner, optional = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise ValueError(f"{where}: null is not allowed for a non-optional field")
    origin = typing.get_origin(inner)
    if isinstance(value, str) and not (inner is str or inner is Path or origin is Literal):
        try:
            return _converter(tp)(value)  # accept CLI-style strings in the file too
        except argparse.ArgumentTypeError as e:
            raise ValueError(f"{where}: {e}") from None

    def wrong(expected: str) -> ValueError:
        return ValueError(f"{where}: expected {expected}, got {json.dumps(value)} ({_json_kind(value)})")

    if origin is Literal:
        choices = typing.get_args(inner)
        # `in` would take true for 1 and 1 for 1.0: the JSON type must match the choice's too
        if not any(value == c and type(value) is type(c) for c in choices):
            shown = ", ".join(repr(c) for c in choices)
            raise ValueError(f"{where}: invalid choice: {value!r} (choose from {shown})")
        return value
    if origin in (tuple, list) or inner in (tuple, list):
        if not isinstance(value, list):
            raise wrong("a list")
        args = typing.get_args(inner)
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            elems = [args[0]] * len(value)
        elif origin is tuple and args:
            if len(value) != len(args):
                raise wrong(f"a list of {len(args)} values")
            elems = list(args)
        else:
            elems = [args[0] if args else Any] * len(value)
        items = [v if t is Any else _coerce_json(v, t, f"{where}[{i}]") for i, (v, t) in enumerate(zip(value, elems))]
        return tuple(items) if (origin or inner) is tuple else items
    if inner is bool:
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if inner is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong("an integer")
        return value
    if inner is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong("a number")
        return float(value)
    if inner is str or inner is Path:
        if not isinstance(value, str):
            raise wrong("a string")
        return Path(value) if inner is Path else value
    if inner is dict or origin is dict:
        if not isinstance(value, dict):
            raise wrong("a JSON object")
        return value
    if isinstance(inner, type) and issubclass(inner, enum.Enum):
        try:
            return _scalar_converter(inner)(str(value))
        except argparse.ArgumentTypeError as e:
            raise ValueError(f"{where}: {e}") from None
    return value


def _build(cls: type, file_values: dict[str, Any], cli_values: dict[str, Any],
           prefix: tuple[str, ...], base: Any = None) -> Any:
    """An instance of `cls` from flags > file > `base` (the enclosing field's default instance,
    so `--driver.steps` keeps the other values a `default_factory` chose) > class defaults."""
    known = {f.name for f, _ in _init_fields(cls)}
    unknown = sorted(set(file_values) - known)
    if unknown:
        where = ".".join(prefix) or "top level"
        raise ValueError(f"unknown key(s) in --config ({where}): {', '.join(unknown)}")
    kwargs: dict[str, Any] = {}
    for f, tp in _init_fields(cls):
        path = prefix + (f.name,)
        dest = ".".join(path)
        sub = _nested_cls(tp)
        if sub is not None:
            fv = file_values.get(f.name, {})
            if fv is None:
                kwargs[f.name] = None
                continue
            if not isinstance(fv, dict):
                raise ValueError(f"--config: {dest} must be a JSON object")
            touched = fv or any(k.startswith(dest + ".") for k in cli_values)
            default = getattr(base, f.name) if base is not None else _default_of(f)
            if touched or default is _MISSING:
                inner = default if isinstance(default, sub) else None
                kwargs[f.name] = _build(sub, fv, cli_values, path, inner)
            elif base is not None:
                kwargs[f.name] = default
            continue
        if dest in cli_values:
            kwargs[f.name] = cli_values[dest]
        elif f.name in file_values:
            kwargs[f.name] = _coerce_json(file_values[f.name], tp, f"--config: {dest}")
        elif base is not None:
            kwargs[f.name] = getattr(base, f.name)
        elif _default_of(f) is _MISSING:
            raise ValueError(f"missing required argument --{dest.replace('_', '-')}")
    return cls(**kwargs)


def parse_config(cls: type[T], argv: list[str] | None = None,
                 description: str | None = None) -> T:
    """Parse ``argv`` (default ``sys.argv[1:]``) into an instance of the dataclass ``cls``.

    Precedence: dataclass defaults < ``--config`` JSON file < command-line flags.
    Errors (unknown flag, bad value, invalid choice, ``__post_init__`` ValueError, bad
    config file) go through ``parser.error``: usage + message on stderr, SystemExit(2).
    """
    parser = build_parser(cls, description)
    ns = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    cli_values = {k: v for k, v in vars(ns).items() if k != "config"}
    file_values: dict[str, Any] = {}
    if ns.config is not None:
        try:
            file_values = json.loads(Path(ns.config).read_text())
        except (OSError, json.JSONDecodeError) as e:
            parser.error(f"--config {ns.config}: {e}")
        if not isinstance(file_values, dict):
            parser.error(f"--config {ns.config}: expected a JSON object at the top level")
    try:
        return _build(cls, file_values, cli_values, ())
    except ValueError as e:  # includes __post_init__ validation (and ConfigError)
        parser.error(str(e))
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- logging


def config_to_dict(obj: Any) -> Any:
    """A JSON-ready view of a (nested) config: dataclasses -> dicts, tuples -> lists,
    Paths -> str, Enums -> their value. Non-init fields are included (they are derived
    settings worth logging)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: config_to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): config_to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [config_to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    return obj
