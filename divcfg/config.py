"""Configuration: one dataclass per stage, every field with help text and its valid range (TRL-style).

Resolution order: the dataclass defaults < a named preset (``--preset``) < a TOML file
(``--config FILE.toml``) < explicit command-line flags (``--field value``, generated from the
dataclass). The resolved config is stored beside every output.

Validation lives here, once for every stage. A field declares its range in its metadata::

    batch_size: int = field(32, "pieces per step", ge=1)
    lr: float = field(1e-3, "peak learning rate", gt=0)
    cond_dropout: float = field(0.2, "probability ...", ge=0, le=1)
    divergence: str = field("reverse_kl", "...", choices=DIVERGENCES)

Keys: ``ge`` (≥), ``gt`` (>), ``le`` (≤), ``lt`` (<), ``choices``; floats must be finite unless
``finite=False``. A ``str`` field with ``float_list=True`` holds comma-separated numbers
(``lams = "0,0.5,1"``), and the range applies to each of them. Values are coerced strictly: a TOML int is accepted for a float field, but a
string is never a number and never a bool (``bf16 = "false"`` is an error, not True), and a bool
is never a number. A violation is one :class:`UserError` line naming the field, the value and the
fix. ``validate_config(cfg)`` checks a dataclass built in Python; ``arg_type(...)`` gives argparse
the same checks for commands whose flags are not a dataclass (``sample``, ``report``, ...).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from pathlib import Path
from typing import Any

from divcfg.errors import UserError

RANGE_KEYS = ("ge", "gt", "le", "lt", "choices", "finite", "float_list")
_KINDS = {"int": int, "float": float, "str": str, "bool": bool}


def field(default: Any, help: str, **kw):
    """A dataclass field carrying its help text and, optionally, its range (see the module doc)."""
    unknown = set(kw) - set(RANGE_KEYS)
    if unknown:
        raise TypeError(f"field(): unknown range key(s) {sorted(unknown)}; use {RANGE_KEYS}")
    return dataclasses.field(default=default, metadata={"help": help, **kw})


def field_kind(f: dataclasses.Field) -> type:
    """The Python type of a field (``from __future__ import annotations`` makes it a string)."""
    return f.type if not isinstance(f.type, str) else _KINDS.get(f.type.split("|")[0].strip(), str)


def range_text(meta: dict) -> str:
    """A human description of a range, e.g. ``>= 0 and <= 1`` or ``one of a, b``."""
    if meta.get("choices") is not None:
        return "one of " + ", ".join(str(c) for c in meta["choices"])
    parts = [f"{op} {meta[k]:g}" for k, op in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))
             if meta.get(k) is not None]
    return " and ".join(parts)


def check_value(value: Any, kind: type, meta: dict) -> Any:
    """Coerce ``value`` strictly to ``kind`` and check it against the range in ``meta``.

    Returns the coerced value; raises ``ValueError`` with the reason (without the field's name).
    """
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false (no quotes), got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be a whole number, got {value!r}")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"must be a number, got {value!r}")
        value = float(value)
        if meta.get("finite", True) and not math.isfinite(value):
            raise ValueError(f"must be a finite number, got {value!r}")
        if math.isnan(value):
            raise ValueError("must be a number, got nan")
    elif kind is str:
        if not isinstance(value, str):
            raise ValueError(f"must be a string, got {value!r}")
        if meta.get("float_list"):
            item_meta = {k: v for k, v in meta.items() if k != "float_list"}
            for item in (x.strip() for x in value.split(",")):
                if not item:
                    continue
                try:
                    number = float(item)
                except ValueError:
                    raise ValueError(f"must be comma-separated numbers, got {value!r}") from None
                try:
                    check_value(number, float, item_meta)
                except ValueError:
                    rng = range_text(item_meta)
                    raise ValueError(f"must hold finite numbers{' ' + rng if rng else ''}, got {item!r} "
                                     f"in {value!r}") from None
            return value
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ValueError(f"must be {range_text(meta)}, got {value!r}")
    bad = ((meta.get("ge") is not None and not value >= meta["ge"])
           or (meta.get("gt") is not None and not value > meta["gt"])
           or (meta.get("le") is not None and not value <= meta["le"])
           or (meta.get("lt") is not None and not value < meta["lt"]))
    if bad:
        raise ValueError(f"must be {range_text(meta)}, got {value!r}")
    return value


def validate_config(cfg) -> None:
    """Check every field of a config dataclass against its type and declared range (UserError)."""
    for f in dataclasses.fields(cfg):
        try:
            value = check_value(getattr(cfg, f.name), field_kind(f), f.metadata)
        except ValueError as e:
            flag = f"--{f.name.replace('_', '-')}"
            raise UserError(f"{flag} {e}: pass e.g. {flag} {f.default} (the default)") from None
        if value is not getattr(cfg, f.name):
            object.__setattr__(cfg, f.name, value)


def toml_literal(value: Any) -> str:
    """``value`` as TOML writes it (``true``, ``3``, ``"text"``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def _parse_bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def arg_type(kind: type, **meta):
    """An argparse ``type=`` that parses a flag as ``kind`` and checks the range in ``meta``
    (same keys as :func:`field`): ``parser.add_argument("--top-k", type=arg_type(int, ge=0))``."""
    def parse(s: str):
        if kind is bool:
            return _parse_bool(s)
        try:
            value = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'a whole number' if kind is int else 'a number'}, "
                                             f"got {s!r}") from None
        try:
            return check_value(value, kind, meta)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = kind.__name__  # argparse names the type in "invalid <name> value"
    return parse


def parse_float_list(text: str, name: str, **meta) -> list[float]:
    """A comma-separated list of numbers (``--lams 0,0.5,1``), each checked like a float field with
    the range in ``meta`` (finite by default); empty text is the empty list. One-line UserError."""
    flag = f"--{name.replace('_', '-')}"
    out = []
    for item in (x.strip() for x in (text or "").split(",")):
        if not item:
            continue
        try:
            out.append(check_value(float(item), float, meta))
        except ValueError as e:
            reason = str(e) if "must" in str(e) else f"must be comma-separated numbers, got {item!r}"
            raise UserError(f"{flag} {reason} (in {text!r}): pass e.g. {flag} 1.5,2,3") from None
    return out


def add_config_arguments(parser: argparse.ArgumentParser, cls, presets: dict[str, dict] | None = None,
                         skip: tuple[str, ...] = ()) -> None:
    """Add ``--preset``, ``--config`` and one ``--<field>`` flag per dataclass field."""
    if presets:
        parser.add_argument("--preset", choices=sorted(presets), default=None,
                            help=f"named size preset ({', '.join(sorted(presets))})")
    parser.add_argument("--config", type=Path, default=None, metavar="FILE.toml",
                        help="TOML file with field = value lines")
    group = parser.add_argument_group("configuration fields")
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind = field_kind(f)
        rng = range_text(f.metadata)
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=arg_type(kind, **f.metadata),
                           default=None, metavar=kind.__name__.upper(),
                           help=f"{f.metadata.get('help', '')} (default: {f.default}"
                                f"{'; ' + rng if rng else ''})")


def load_toml(path: str | Path) -> dict:
    """Read a TOML config file; a missing file, a folder or bad syntax is one UserError line."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"--config '{path}' is a folder: pass a TOML file (FILE.toml)")
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise UserError(f"config file '{path}' not found: check the path") from None
    except OSError as e:
        raise UserError(f"config file '{path}' cannot be read ({e.strerror}): check the path") from None
    except UnicodeDecodeError:
        raise UserError(f"config file '{path}' is not UTF-8 text: save it as UTF-8 TOML") from None
    except tomllib.TOMLDecodeError as e:
        msg = " ".join(str(e).split())
        raise UserError(f"config file '{path}' is not valid TOML ({msg}): fix the syntax") from None


def resolve_config(cls, args: argparse.Namespace, presets: dict[str, dict] | None = None,
                   default_preset: str | None = None):
    """Build the config: defaults < preset < TOML < flags, each value checked (one-line UserError)."""
    values: dict[str, Any] = {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    preset = getattr(args, "preset", None) or default_preset
    if presets and preset:
        values.update(presets[preset])
    if getattr(args, "config", None):
        data = load_toml(args.config)
        unknown = set(data) - set(fields)
        if unknown:
            raise UserError(f"config file '{args.config}' has unknown field(s) {sorted(unknown)}: "
                            f"valid fields are listed by --help")
        for name, v in data.items():
            f = fields[name]
            try:
                values[name] = check_value(v, field_kind(f), f.metadata)
            except ValueError as e:
                raise UserError(f"config file '{args.config}': {name} {e}: write e.g. "
                                f"{name} = {toml_literal(f.default)} (the default)") from None
    for name in fields:
        v = getattr(args, name, None)
        if v is not None:
            values[name] = v
    cfg = cls(**values)
    if preset and "preset" in fields:
        try:
            cfg.preset = preset
        except (AttributeError, dataclasses.FrozenInstanceError):
            object.__setattr__(cfg, "preset", preset)
    validate_config(cfg)
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


# --------------------------------------------------------------------------- TOML for plain argparse commands


def add_toml_option(parser: argparse.ArgumentParser) -> None:
    """``--config FILE.toml`` for a command whose flags are plain argparse options (``sample``,
    ``merge``, ...): keys are the flag names (``top_k = 40`` for ``--top-k``); flags given on the
    command line win. The values are applied by :func:`apply_toml_defaults` before parsing."""
    parser.add_argument("--config", type=Path, default=None, metavar="FILE.toml",
                        help="TOML file with flag = value lines (flag names with _ for -); flags given here win")
    parser.set_defaults(_toml_flags=True)


def _option_for(parser: argparse.ArgumentParser, key: str) -> argparse.Action | None:
    action = parser._option_string_actions.get("--" + key.replace("_", "-"))
    return None if action is None or action.dest in ("help", "config") else action


def apply_toml_defaults(parser: argparse.ArgumentParser, path: str | Path) -> None:
    """Read ``path`` and make its values the defaults of ``parser``'s flags, each checked by the
    flag's own type and range (strictly: a string is never a number, a bool never a count)."""
    data = load_toml(path)
    unknown = sorted(k for k in data if _option_for(parser, k) is None)
    if unknown:
        raise UserError(f"config file '{path}' has unknown key(s) {unknown}: use flag names, e.g. top_k = 40 "
                        f"for --top-k (listed by --help)")
    for key, value in data.items():
        action = _option_for(parser, key)
        kind = _KINDS.get(getattr(action.type, "__name__", "str"), str)
        try:
            if action.nargs == 0:  # a switch such as --no-progress
                parsed = check_value(value, bool, {})
                parsed = action.const if parsed else action.default
            elif isinstance(action, argparse._AppendAction):
                items = value if isinstance(value, list) else [value]
                parsed = [_toml_flag_value(v, kind, action) for v in items]
            else:
                parsed = _toml_flag_value(value, kind, action)
        except (ValueError, argparse.ArgumentTypeError) as e:
            fix = (f"write e.g. {key} = {toml_literal(action.default)} (the default)"
                   if action.default is not None and not isinstance(action.default, list) else "see --help")
            raise UserError(f"config file '{path}': {key} {e}: {fix}") from None
        action.default, action.required = parsed, False


def _toml_flag_value(value: Any, kind: type, action: argparse.Action) -> Any:
    value = check_value(value, kind, {})  # the TOML type must be the flag's type
    text = repr(value) if kind is float else str(value).lower() if kind is bool else str(value)
    parsed = action.type(text) if action.type is not None else text
    if action.choices is not None and parsed not in action.choices:
        raise ValueError(f"must be one of {', '.join(map(str, action.choices))}, got {value!r}")
    return parsed
