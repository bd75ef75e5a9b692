"""The configuration mechanism (divcfg.config): defaults < preset < TOML < flags, strict coercion,
declared ranges, one-line errors that name the field, the value and the fix."""

from __future__ import annotations

import argparse
import dataclasses
import math

import pytest

from divcfg.config import (add_config_arguments, arg_type, check_value, field, parse_float_list, resolve_config,
                           validate_config)
from divcfg.errors import UserError


@dataclasses.dataclass
class Demo:
    steps: int = field(10, "steps", ge=1)
    rate: float = field(0.5, "a probability", ge=0, le=1)
    scale: float = field(1.0, "a positive scale", gt=0)
    mode: str = field("a", "a mode", choices=("a", "b"))
    flag: bool = field(True, "a switch")
    lams: str = field("0,1", "weights", float_list=True, ge=0, le=1)
    name: str = field("x", "free text")
    preset: str = field("base", "informational")

    def validate(self) -> None:
        if self.mode == "b" and self.steps < 3:
            raise UserError("--mode b needs --steps >= 3")


PRESETS = {"base": {}, "long": {"steps": 100, "rate": 0.9}}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Demo, PRESETS, skip=("preset",))
    return parser.parse_args(argv)


def resolve(argv: list[str], tmp_path=None, toml: str | None = None) -> Demo:
    if toml is not None:
        path = tmp_path / "c.toml"
        path.write_text(toml)
        argv = argv + ["--config", str(path)]
    return resolve_config(Demo, parse(argv), PRESETS, default_preset="base")


def test_resolution_order_defaults_preset_toml_flags(tmp_path):
    assert resolve([]).steps == 10
    cfg = resolve(["--preset", "long"])
    assert (cfg.steps, cfg.rate, cfg.preset) == (100, 0.9, "long")
    cfg = resolve(["--preset", "long"], tmp_path, "steps = 7\nscale = 2\n")
    assert (cfg.steps, cfg.rate, cfg.scale) == (7, 0.9, 2.0) and isinstance(cfg.scale, float)
    cfg = resolve(["--preset", "long", "--steps", "5"], tmp_path, "steps = 7\n")
    assert cfg.steps == 5


@pytest.mark.parametrize("toml, words", [
    ('flag = "false"', ["flag", "'false'", "true or false", "flag = true"]),
    ('scale = "3"', ["scale", "'3'", "a number", "scale = 1.0"]),
    ("steps = 2.5", ["steps", "2.5", "whole number"]),
    ("steps = true", ["steps", "True", "whole number"]),
    ("rate = 1.5", ["rate", ">= 0 and <= 1", "1.5"]),
    ("scale = nan", ["scale", "finite", "nan"]),
    ("scale = inf", ["scale", "finite"]),
    ("scale = 0", ["scale", "> 0"]),
    ('mode = "c"', ["mode", "one of a, b", "'c'"]),
    ("name = 3", ["name", "a string", 'name = "x"']),
    ('lams = "0,2"', ["lams", "'2'", "<= 1"]),
    ('lams = "0,x"', ["lams", "comma-separated"]),
    ("[table]\nsteps = 3", ["table"]),
    ("nope = 1", ["unknown", "nope"]),
    ("steps = ", ["not valid TOML"]),
])
def test_bad_toml_values_are_one_line_errors_naming_field_value_and_fix(tmp_path, toml, words):
    with pytest.raises(UserError) as e:
        resolve([], tmp_path, toml + "\n")
    msg = str(e.value)
    assert "\n" not in msg and "c.toml" in msg
    for w in words:
        assert w in msg, (w, msg)


def test_config_path_mistakes(tmp_path):
    with pytest.raises(UserError, match="is a folder"):
        resolve_config(Demo, parse(["--config", str(tmp_path)]))
    with pytest.raises(UserError, match="not found"):
        resolve_config(Demo, parse(["--config", str(tmp_path / "missing.toml")]))
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UserError, match="UTF-8|TOML"):
        resolve_config(Demo, parse(["--config", str(tmp_path / "bin.toml")]))


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "must be >= 1"),
    (["--steps", "1.5"], "whole number"),
    (["--rate", "nan"], "finite"),
    (["--rate", "-0.1"], ">= 0"),
    (["--scale=-inf"], "finite"),
    (["--mode", "c"], "one of a, b"),
    (["--flag", "maybe"], "true/false"),
    (["--lams", "0,nan"], "finite"),
])
def test_bad_flags_are_argparse_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        parse(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_flags_parse_booleans_strictly():
    assert parse(["--flag", "false"]).flag is False
    assert parse(["--flag", "1"]).flag is True


def test_cross_field_validate_runs_after_the_ranges():
    with pytest.raises(UserError, match="--mode b needs"):
        resolve(["--mode", "b", "--steps", "2"])


def test_validate_config_checks_a_dataclass_built_in_python():
    validate_config(Demo())
    for kw, word in [(dict(steps=0), "--steps"), (dict(rate=float("nan")), "--rate"), (dict(flag="false"), "--flag"),
                     (dict(scale="3"), "--scale"), (dict(mode="z"), "--mode")]:
        with pytest.raises(UserError, match=word) as e:
            validate_config(Demo(**kw))
        assert "(the default)" in str(e.value)  # the fix: a valid example
    cfg = Demo(scale=3)  # an int where a float is declared is coerced
    validate_config(cfg)
    assert isinstance(cfg.scale, float)


def test_check_value_edges():
    assert check_value(0, float, {"ge": 0}) == 0.0
    assert check_value(float("inf"), float, {"finite": False}) == math.inf
    with pytest.raises(ValueError):
        check_value(float("nan"), float, {"finite": False})
    with pytest.raises(ValueError):
        check_value(1.0, float, {"lt": 1})
    with pytest.raises(ValueError):
        check_value(True, float, {})


def test_arg_type_and_float_lists():
    top_k = arg_type(int, ge=0)
    assert top_k("3") == 3
    with pytest.raises(argparse.ArgumentTypeError, match=">= 0"):
        top_k("-1")
    with pytest.raises(argparse.ArgumentTypeError, match="whole number"):
        top_k("x")
    assert parse_float_list(" 1, 2 ,", "lams") == [1.0, 2.0] and parse_float_list("", "lams") == []
    with pytest.raises(UserError, match="--cfg-gammas"):
        parse_float_list("1,inf", "cfg_gammas")


def test_field_rejects_unknown_range_keys():
    with pytest.raises(TypeError, match="min"):
        field(1, "x", min=1)


def test_every_stage_config_default_is_valid_and_declares_ranges():
    from divcfg.evaluation import EvalConfig
    from divcfg.finetune import FinetuneConfig
    from divcfg.pretrain import PRESETS as PRETRAIN_PRESETS
    from divcfg.pretrain import PretrainConfig

    for cls in (PretrainConfig, FinetuneConfig, EvalConfig):
        validate_config(cls())
        numeric = [f for f in dataclasses.fields(cls) if f.type in ("int", "float", int, float)]
        assert all(set(f.metadata) & {"ge", "gt", "le", "lt", "choices"} for f in numeric), cls
    for values in PRETRAIN_PRESETS.values():
        cfg = PretrainConfig(**values)
        validate_config(cfg)
        cfg.validate()


def test_plain_argparse_commands_take_the_same_toml_config(tmp_path):
    """`--config FILE.toml` means a TOML file in every command; in commands whose flags are plain
    argparse options (sample, merge, embedder train, ...) its keys are the flag names."""
    from divcfg.cli import parse_command

    path = tmp_path / "sample.toml"
    path.write_text('checkpoint = "ckpt"\nprompt = ["a reel", "a jig"]\ncfg = 3\ntop_k = 40\n')
    args = parse_command(["sample", "--config", str(path)])
    assert (args.checkpoint, args.prompt, args.gamma, args.top_k) == ("ckpt", ["a reel", "a jig"], 3.0, 40)
    args = parse_command(["sample", "--config", str(path), "--top-k", "5"])  # flags win
    assert args.top_k == 5
    nested = tmp_path / "embedder.toml"
    nested.write_text('preset = "tiny"\nsteps = 7\nno_augment = true\n')
    args = parse_command(["embedder", "train", f"--config={nested}"])
    assert (args.preset, args.steps, args.no_augment) == ("tiny", 7, True)
    for text, words in [('top_k = "3"', ["top_k", "whole number"]), ("top_k = -1", ["top_k", ">= 0"]),
                        ("cfg = nan", ["cfg", "finite"]), ("nope = 1", ["unknown", "nope"]),
                        ('cfg_mode = "fast"', ["cfg_mode", "one of"])]:
        path.write_text(text + "\n")
        with pytest.raises(UserError) as e:
            parse_command(["sample", "--checkpoint", "c", "--prompt", "p", "--config", str(path)])
        assert all(w in str(e.value) for w in words), str(e.value)
