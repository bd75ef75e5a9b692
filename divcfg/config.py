"""Configuration: one dataclass per stage, every field with help text (TRL-style).

Resolution order: the dataclass defaults < a named preset < a TOML file (``--config``) <
explicit command-line flags (``--field value``, generated from the dataclass). The resolved
config is stored beside every output.
"""

from __future__ import annotations

import argparse
import dataclasses
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from pathlib import Path
from typing import Any

from divcfg.errors import UserError


def field(default: Any, help: str, **kw):
    """A dataclass field carrying its help text."""
    return dataclasses.field(default=default, metadata={"help": help, **kw})


def _parse_bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def add_config_arguments(parser: argparse.ArgumentParser, cls, presets: dict[str, dict] | None = None,
                         skip: tuple[str, ...] = ()) -> None:
    """Add ``--preset``, ``--config`` and one ``--<field>`` flag per dataclass field."""
    if presets:
        parser.add_argument("--preset", choices=sorted(presets), default=None,
                            help=f"named size preset ({', '.join(sorted(presets))})")
    parser.add_argument("--config", type=Path, default=None, help="TOML file with field = value lines")
    group = parser.add_argument_group("configuration fields")
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind = f.type if not isinstance(f.type, str) else {"int": int, "float": float, "str": str,
                                                           "bool": bool}.get(f.type, str)
        typ = _parse_bool if kind is bool else kind
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=typ, default=None,
                           metavar=kind.__name__.upper() if hasattr(kind, "__name__") else "VALUE",
                           help=f"{f.metadata.get('help', '')} (default: {f.default})")


def resolve_config(cls, args: argparse.Namespace, presets: dict[str, dict] | None = None,
                   default_preset: str | None = None):
    """Build the config: defaults < preset < TOML < flags. Unknown keys give a one-line error."""
    values: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(cls)}
    preset = getattr(args, "preset", None) or default_preset
    if presets and preset:
        values.update(presets[preset])
    if getattr(args, "config", None):
        try:
            with open(args.config, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise UserError(f"config file '{args.config}' not found: check the path") from None
        except tomllib.TOMLDecodeError as e:
            raise UserError(f"config file '{args.config}' is not valid TOML ({e}): fix the syntax") from None
        unknown = set(data) - names
        if unknown:
            raise UserError(f"config file '{args.config}' has unknown field(s) {sorted(unknown)}: "
                            f"valid fields are listed by --help")
        values.update(data)
    for name in names:
        v = getattr(args, name, None)
        if v is not None:
            values[name] = v
    cfg = cls(**values)
    if preset:
        try:
            cfg.preset = preset
        except (AttributeError, dataclasses.FrozenInstanceError):
            pass
    return cfg
