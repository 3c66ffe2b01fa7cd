"""Command-line options from typed dataclasses, and ``--config FILE.toml``.

Each field of an options dataclass becomes one flag: ``--{prefix}{field-name}``, typed from the
annotation, with the docstring under the field as its help and the field's default as its
default; a field without a default is a required option. The parsed value lands under the dest
``{group}__{field}``, from which ``collect`` rebuilds the dataclass.

``CommandParser`` is the parser of every command: it builds its options only when its command is
chosen (so ``gpt2tune --help`` imports no torch), reads ``--config FILE.toml`` as defaults that
command-line options override, and reports a usage error as a ``UserError``, which the CLI prints
as one line.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from collections.abc import Callable

from gpt2tune.errors import UserError, as_flag

# ----------------------------------------------------------------------------- dataclass -> flags


def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass (the one source of help text); a
    field a subclass declares again takes the subclass's docstring."""
    docs = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        node = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0]
        assert isinstance(node, ast.ClassDef)  # a dataclass's source is its class statement
        body = node.body
        for stmt, nxt in zip(body, body[1:]):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
            ):
                docs[stmt.target.id] = " ".join(str(nxt.value.value).split())
    return docs


class Append(argparse.Action):
    """A repeatable option (``--stop A --stop B``); values given on the command line replace a
    list that came from ``--config`` rather than adding to it."""

    def __call__(self, parser, namespace, values, option_string=None):
        current = getattr(namespace, self.dest, None)
        fresh = current is None or current is self.default  # still the default or the config's
        setattr(
            namespace, self.dest, ([] if fresh or current is None else list(current)) + [values]
        )


def add_dataclass_args(
    parser: argparse.ArgumentParser,
    cls,
    group: str,
    prefix: str = "",
    skip: tuple[str, ...] = (),
    positional: tuple[str, ...] = (),
    overrides: dict[str, dict] | None = None,
) -> None:
    """Add one option per field of dataclass ``cls`` to ``parser``.

    Args:
        parser: the command's parser.
        cls: an options dataclass whose fields have docstrings.
        group: the dests are ``{group}__{field}`` (see ``collect``).
        prefix: put before each flag name (``lora-`` gives ``--lora-r``).
        skip: fields that get no option.
        positional: fields taken as positional arguments instead of ``--flags``.
        overrides: argparse keywords for a field where the annotation does not say it all
            (``{"stop": {"action": Append}}``).

    ``bool`` fields become ``--flag/--no-flag``, ``list`` fields take one or more values,
    ``tuple`` fields exactly as many as the annotation names, ``Literal`` fields one of its
    values; a field without a default is required.
    """
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp = hints[f.name]
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required:
            default = None
        elif f.default is not dataclasses.MISSING:
            default = f.default
        else:
            default = f.default_factory()  # type: ignore[operator]  # not MISSING: checked above
        kw: dict = {"dest": f"{group}__{f.name}", "default": default, "help": docs.get(f.name, "")}
        if isinstance(tp, types.UnionType):  # X | None
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction  # adds "(default: ...)" itself
        else:
            kw["metavar"] = f.name.upper()
            if origin is list:
                kw.update(nargs="+", type=args[0])
            elif origin is tuple:
                kw.update(nargs=len(args), type=args[0])
            elif origin is typing.Literal:
                kw.update(choices=list(args), type=type(args[0]))
            else:
                kw["type"] = tp
            if required:
                kw["help"] += " (required)"
            elif default not in (None, [], ""):
                shown = (
                    " ".join(map(str, default)) if isinstance(default, list | tuple) else default
                )
                kw["help"] += f" (default: {shown})"
        kw.update((overrides or {}).get(f.name, {}))
        if kw.get("choices") is not None:
            kw.pop("metavar", None)  # let the help list the choices
        kw["help"] = kw["help"].replace("%", "%%")
        if f.name in positional:
            dest = kw.pop("dest")
            kw["metavar"] = f.name.upper()
            parser.add_argument(dest, **{k: v for k, v in kw.items() if k != "default"})
        else:
            kw.setdefault("required", required)
            flag = "--" + prefix + f.name.replace("_", "-")
            parser.add_argument(flag, **kw)
            if isinstance(parser, CommandParser):
                parser.field_flags.setdefault(f.name, flag)


def collect(args: argparse.Namespace, group: str, cls):
    """Rebuild dataclass ``cls`` from the parsed options of ``group``."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if not hasattr(args, f"{group}__{f.name}"):
            continue  # a skipped field keeps its default
        value = getattr(args, f"{group}__{f.name}")
        tp = hints[f.name]
        if isinstance(tp, types.UnionType):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        if typing.get_origin(tp) is tuple and isinstance(value, list):
            value = tuple(value)  # nargs=N and TOML both give lists
        values[f.name] = value
    return cls(**values)


# ----------------------------------------------------------------------------- --config FILE.toml


def read_config_file(path: str) -> dict:
    """A TOML file of options, flattened: ``[lora] r = 4`` becomes ``lora-r``."""
    import tomllib

    try:
        with open(path, "rb") as f:
            table = tomllib.load(f)
    except OSError as e:
        raise UserError(f"cannot read --config {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"--config {path} is not valid TOML: {e}") from None
    flat: dict = {}
    for key, value in table.items():
        if isinstance(value, dict):
            flat.update({f"{key}-{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def _type_name(tp) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _checked(action: argparse.Action, value, where: str):
    """A value from a TOML file, checked as argparse checks the same value on the command line
    (argparse checks nothing in a default)."""
    counted = isinstance(action.nargs, int) and action.nargs > 0  # a tuple field
    many = isinstance(action, Append) or action.nargs in ("+", "*") or counted
    if many and not isinstance(value, list):
        raise UserError(f"{where} should be a list, got {value!r}")
    if counted and len(value) != action.nargs:
        raise UserError(f"{where} should be a list of {action.nargs} values, got {value!r}")
    expected: type = (
        bool
        if isinstance(action, argparse.BooleanOptionalAction)
        else action.type
        if isinstance(action.type, type)
        else str
    )
    checked = []
    for v in value if many else [value]:
        if expected is float and type(v) is int:
            v = float(v)
        if not isinstance(v, expected) or (expected is not bool and isinstance(v, bool)):
            raise UserError(f"{where} should be {_type_name(expected)}, got {v!r}")
        if action.choices is not None and v not in action.choices:
            raise UserError(
                f"{where} should be one of {', '.join(map(str, action.choices))}; got {v!r}"
            )
        checked.append(v)
    return checked if many else checked[0]


def apply_config_file(parser: argparse.ArgumentParser, path: str) -> None:
    """Defaults from a TOML file whose keys are option names (``lr``, ``lora-r``, ``batch_size``).

    The values are checked as the same options would be on the command line, and an option the
    file gives is no longer required there; options on the command line still win.
    """
    by_flag = {
        opt.removeprefix("--"): a
        for a in parser._actions
        for opt in a.option_strings
        if opt.startswith("--") and not opt.startswith("--no-")
    }
    defaults = {}
    for key, value in read_config_file(path).items():
        name = key.replace("_", "-")
        action = by_flag.get(name)
        if action is None or name in ("config", "help"):
            raise UserError(
                f"--config {path}: unknown option {key!r}; use the names of "
                f"`{parser.prog} --help` without the dashes"
            )
        defaults[action.dest] = _checked(action, value, f"--config {path}: {key}")
        action.required = False
    parser.set_defaults(**defaults)


def _config_path(argv: list[str]) -> str | None:
    """The FILE of ``--config FILE`` (or ``--config=FILE``) in a command's arguments."""
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg == "--config":
            if i + 1 >= len(argv):
                raise UserError("--config needs a file name")
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.removeprefix("--config=")
    return None


# ----------------------------------------------------------------------------- the parser


class CommandParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` for gpt2tune and each of its commands.

    - ``build(parser)`` adds the command's options the first time the command is parsed, so the
      options of commands not chosen (and the libraries their dataclasses live in) are never
      imported: ``gpt2tune --help`` and ``--version`` stay torch-free.
    - A parser with a ``--config`` option reads that file first: its values become defaults.
    - A usage error raises ``UserError`` (one line from ``main``) instead of printing the usage.
    """

    def __init__(
        self, *args, build: Callable[[argparse.ArgumentParser], None] | None = None, **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        self._build = build
        self.field_flags: dict[str, str] = {}
        """The flag of each options field (``r`` -> ``--lora-r``), to spell a library error's
        field as this command's flag (``spell``)."""

    def ensure_built(self) -> None:
        """Add the command's options now (once)."""
        if self._build is not None:
            build, self._build = self._build, None
            build(self)
            if self._subparsers is not None:
                return  # --config belongs to the commands below (data list, data show)
            self.add_argument(
                "--config",
                metavar="FILE.toml",
                help="TOML file of options (keys are option names; [lora] r = 4 "
                "means lora-r = 4); command-line options win",
            )

    def parse_known_args(self, args=None, namespace=None):
        self.ensure_built()
        if "--config" in self._option_string_actions:
            path = _config_path(list(args) if args is not None else [])
            if path is not None:
                apply_config_file(self, path)
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self.ensure_built()
        return super().format_help()

    def spell(self, field: str) -> str:
        """A field named by a library error, as this command's flag (``--lora-r`` for LoRAConfig's
        ``r`` in ``train``); a field the command has no flag for, as ``--`` + its name."""
        return self.field_flags.get(field) or as_flag(field)

    def error(self, message: str) -> typing.NoReturn:
        raise UserError(f"{message}; see `{self.prog} --help`")
