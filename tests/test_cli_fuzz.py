"""The CLI error contract, fuzzed: every subcommand with random and malformed flag values and TOML
config files. Each run must exit 0, or exit 2 with exactly one stderr line that starts with
``error:``; never a traceback (``divcfg.cli`` states the contract).

Runs are in-process (``divcfg.cli.main``) with stderr captured, plus a few real subprocesses for the
entry point. They stay cheap: data sets and most checkpoints point at missing folders, so a run that
passes validation fails fast at its first input; ``sample`` and ``merge`` use tiny untrained
checkpoints built here and really run. The number of invocations and what they ended in is printed
in pytest's summary (``tests/conftest.py``).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import subprocess
import sys
import traceback
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from divcfg.cli import build_parser, main
from divcfg.models.generator import save_generator
from divcfg.models.transformer import ModelConfig, MusicTransformer
from divcfg.music.tokenizer import make_tokenizer, save_tokenizer, special_ids

#: every fuzzed invocation: (argv, exit code, the error line or None); read by conftest's summary
INVOCATIONS: list[tuple[list[str], object, str | None]] = []

# bounded: 12 examples per (sub)command by default, same ones every run; DIVCFG_FUZZ_EXAMPLES=500 digs deeper
FUZZ = settings(max_examples=int(os.environ.get("DIVCFG_FUZZ_EXAMPLES", 12)), deadline=None,
                derandomize=not os.environ.get("DIVCFG_FUZZ_EXAMPLES"),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])

# flags whose value is a path: fixed by the base command line (so a run never trains on real data)
PATH_FLAGS = {"--data-dir", "--out", "--checkpoint", "--base", "--embedder", "--scorer", "--quality",
              "--diversity", "--merge-a", "--merge-b", "--root", "--data-root", "--config", "--extra-file",
              "--export", "--training-log", "--force", "--help", "-h"}

# values a user (or a typo) might give any flag
MALFORMED = ["nan", "NaN", "inf", "-inf", "1e309", "-1", "0", "-5", "-0.5", "0.5", "1", "2", "3", "7", "1000",
             "1.5", "", " ", "abc", "true", "false", "1,2", "0,nan", "2,x", "-", "0x10", "1_000", "3e2",
             "tiny", "small", "cuda", "cpu", "reverse_kl", "loo", "ema", "meter", "val", "☃"]
malformed = st.one_of(st.sampled_from(MALFORMED), st.text(max_size=6))


def values_for(action: argparse.Action):
    """Half plausible values of the flag's own type (so runs get past parsing), half malformed."""
    kind = getattr(action.type, "__name__", "str")
    if action.choices:
        plausible = st.sampled_from([str(c) for c in action.choices])
    elif kind == "int":
        plausible = st.integers(-2, 40).map(str)
    elif kind == "float":
        plausible = st.one_of(st.floats(-1, 10).map(lambda x: f"{x:.3g}"),
                              st.sampled_from(["0", "1", "0.5", "1e300", "1e-300", "1e-9", "100", "101"]))
    elif kind == "bool" or kind == "_parse_bool":
        plausible = st.sampled_from(["true", "false", "1", "0"])
    else:
        plausible = st.sampled_from(["0,0.5,1", "1.5,2", "2", "", "cpu", "a,b"])
    return st.one_of(plausible, malformed)


def invoke(argv: list[str]) -> tuple[object, str]:
    """Run ``divcfg argv`` in-process; returns (exit code or 'traceback', stderr)."""
    err, out = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    try:
        with redirect_stderr(err), redirect_stdout(out):
            try:
                code = main(argv)
            except SystemExit as e:
                code = 0 if e.code is None else e.code
            except BaseException:  # noqa: BLE001 - a traceback is exactly what we look for
                traceback.print_exc(file=err)
                code = "traceback"
    finally:
        torch.set_num_threads(threads)  # a fuzzed --threads must not slow the rest of the suite down
    stderr = err.getvalue()
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    INVOCATIONS.append((argv, code, errors[0] if len(errors) == 1 else None))
    return code, stderr


def assert_contract(argv: list[str], code: object, stderr: str) -> None:
    shown = " ".join(repr(a) if (not a or " " in a) else a for a in argv)
    assert "Traceback" not in stderr and code != "traceback", f"divcfg {shown}\n{stderr}"
    if code == 0:
        return
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1, f"divcfg {shown} -> exit {code}\n{stderr}"


# --------------------------------------------------------------------------- fixtures


def _checkpoint(path: Path, tok_file: Path, vocab: int, ids: dict, seed: int, d_model: int = 16) -> Path:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab, n_layer=1, n_head=2, d_model=d_model, n_prefix=1, max_len=24,
                      dropout=0.0, pad_id=ids["pad"], bos_id=ids["bos"], eos_id=ids["eos"])
    save_generator(path, MusicTransformer(cfg), {"pretrain": {"seed": seed}}, tok_file)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny untrained checkpoints (two mergeable, one of another width, one corrupt), a missing
    folder, fake data roots whose manifests exist (so `demo` skips the data stage and fails at
    pre-training), and a scratch folder."""
    root = tmp_path_factory.mktemp("fuzz")
    tok = make_tokenizer()
    tok_file = save_tokenizer(tok, root / "tok")
    vocab, ids = len(tok), special_ids(tok)
    a = _checkpoint(root / "a", tok_file, vocab, ids, 0)
    b = _checkpoint(root / "b", tok_file, vocab, ids, 1)
    wide = _checkpoint(root / "wide", tok_file, vocab, ids, 2, d_model=32)
    corrupt = _checkpoint(root / "corrupt", tok_file, vocab, ids, 3)
    for f in corrupt.rglob("*.safetensors"):
        f.write_bytes(b"not a safetensors file")
    for preset in ("tiny", "small", "full"):
        (root / "fake_data" / preset).mkdir(parents=True)
        (root / "fake_data" / preset / "manifest.json").write_text("{}")
    (root / "config_folder").mkdir()
    return {"root": root, "a": a, "b": b, "wide": wide, "corrupt": corrupt, "missing": root / "missing",
            "scratch": root / "scratch", "fake_data": root / "fake_data"}


def base_argv(command: tuple[str, ...], w: dict) -> list[str]:
    """A cheap command line for each (sub)command: real work only for sample and merge."""
    m, s = str(w["missing"]), w["scratch"]
    return {
        ("data",): ["data", "--data-dir", str(s / "data"), "--extra-file", f"{m}/extra.abc"],
        ("pretrain",): ["pretrain", "--data-dir", m, "--out", str(s / "pre")],
        ("sample",): ["sample", "--checkpoint", str(w["a"]), "--prompt", "a jig in D major, 6/8",
                      "--max-new-tokens", "6", "--out", str(s / "samples")],
        ("embedder", "train"): ["embedder", "train", "--data-dir", m, "--out", str(s / "emb")],
        ("embedder", "eval"): ["embedder", "eval", "--checkpoint", m, "--data-dir", m],
        ("scorer", "train"): ["scorer", "train", "--data-dir", m, "--out", str(s / "sc")],
        ("scorer", "eval"): ["scorer", "eval", "--checkpoint", m, "--data-dir", m],
        ("finetune",): ["finetune", "--preset", "tiny", "--base", m, "--embedder", "", "--data-dir", m,
                        "--out", str(s / "ft")],
        ("merge",): ["merge", str(w["a"]), str(w["b"]), "--lam", "0.5", "--out", str(s / "merged")],
        ("evaluate",): ["evaluate", "--preset", "tiny", "--base", m, "--data-dir", m, "--out", str(s / "ev")],
        ("report",): ["report", m],
        ("demo",): ["demo", "--preset", "tiny", "--root", str(s / "demo"), "--data-root", str(w["fake_data"])],
        ("listen",): ["listen", m],
        ("select",): ["select", "--demo-root", m, "--out", str(s / "select")],
        ("compare-judges",): ["compare-judges", m, "--audio-embedder", m, "--out", str(s / "compare")],
        ("reproduce",): ["reproduce", "tiny", "--root", str(s / "repro"), "--data-root", str(w["fake_data"]),
                         "--out-dir", str(s / "repro_out")],
    }[command]


def commands() -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every runnable (sub)command of the parser, nested ones (``embedder train``) included."""
    out = {}

    def walk(prefix: tuple[str, ...], parser: argparse.ArgumentParser) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            out[prefix] = parser
        for action in subs:
            for name, sub in action.choices.items():
                walk(prefix + (name,), sub)

    walk((), build_parser())
    return out


COMMANDS = commands()


def fuzzable_flags(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and not set(a.option_strings) & PATH_FLAGS]


def test_every_command_has_a_cheap_base_command_line(world):
    for command in COMMANDS:
        assert base_argv(command, world)[:len(command)] == list(command)


# --------------------------------------------------------------------------- the fuzz


@pytest.mark.parametrize("command", sorted(COMMANDS), ids=" ".join)
@FUZZ
@given(data=st.data())
def test_fuzzed_flags_end_in_exit_0_or_one_error_line(world, command, data):
    argv = base_argv(command, world)
    flags = fuzzable_flags(COMMANDS[command])
    chosen = data.draw(st.lists(st.sampled_from(flags), min_size=1, max_size=3, unique_by=id), label="flags")
    for action in chosen:
        flag = data.draw(st.sampled_from(action.option_strings), label="flag")
        if action.nargs == 0:
            argv = argv + [flag]
        else:
            argv = argv + [flag, data.draw(values_for(action), label=flag)]
    code, stderr = invoke(argv)
    assert_contract(argv, code, stderr)


# TOML: random keys (real fields and unknown ones) with values of every TOML type
toml_values = st.one_of(st.integers(-3, 1000), st.floats(allow_nan=True, allow_infinity=True),
                        st.booleans(), st.text(max_size=8), st.sampled_from(MALFORMED),
                        st.lists(st.integers(0, 3), max_size=2))


def toml_literal(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_literal(x) for x in v) + "]"
    return json.dumps(v) if isinstance(v, str) else str(v)


CONFIG_COMMANDS = [c for c in sorted(COMMANDS) if "--config" in COMMANDS[c]._option_string_actions]


@pytest.mark.parametrize("command", CONFIG_COMMANDS, ids=" ".join)
@FUZZ
@given(data=st.data())
def test_fuzzed_toml_configs_end_in_exit_0_or_one_error_line(world, command, data):
    parser = COMMANDS[command]
    # TOML keys are the flag names (--top-k -> top_k), which are the field names of dataclass configs
    keys = sorted({a.option_strings[-1].lstrip("-").replace("-", "_") for a in fuzzable_flags(parser)} - {"preset"})
    chosen = data.draw(st.lists(st.sampled_from(keys + ["not_a_field"]), min_size=1, max_size=3, unique=True))
    lines = [f"{k} = {toml_literal(data.draw(toml_values, label=k))}" for k in chosen]
    if data.draw(st.booleans(), label="garble"):  # and sometimes a file that is not TOML at all
        lines.append(data.draw(st.sampled_from(["x =", "[table", "= 3", "a = 'unterminated", "\x00"])))
    path = world["scratch"] / "fuzz.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    argv = base_argv(command, world) + ["--config", str(path)]
    code, stderr = invoke(argv)
    assert_contract(argv, code, stderr)


# deep runs: real training on the tiny data set, a step or two, with fuzzed architecture and schedule
DEEP_FLAGS = {
    "pretrain": ["--n-layer", "--n-head", "--d-model", "--n-prefix", "--dropout", "--cond-dropout", "--max-len",
                 "--batch-size", "--lr", "--warmup-steps", "--max-steps", "--grad-clip", "--eval-every",
                 "--ckpt-every", "--bf16", "--seed", "--eval-pieces", "--weight-decay"],
    "finetune": ["--gamma", "--beta", "--divergence", "--jsd-beta", "--group-size", "--baseline", "--ema-decay",
                 "--reward-gate", "--pg-normalise", "--prompts-per-step", "--max-new-tokens", "--temperature",
                 "--cfg-mode", "--updates-per-batch", "--lr", "--warmup-steps", "--max-steps", "--grad-clip",
                 "--eval-every", "--eval-prompts", "--eval-samples", "--eval-max-new-tokens", "--eval-teacher",
                 "--ckpt-every", "--bf16", "--seed"],
}
small_values = st.one_of(st.integers(-1, 12).map(str), st.sampled_from(["0.5", "1", "0", "1e-9", "1e300", "nan",
                                                                          "true", "false", "reverse_kl", "jsd",
                                                                          "forward_kl", "loo", "ema", "batch",
                                                                          "meter", "sequence", "two_pass"]))


@pytest.fixture(scope="module")
def tiny_base_run(tiny_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz_base")
    code, stderr = invoke(["pretrain", "--preset", "tiny", "--data-dir", str(tiny_data_dir), "--out", str(out),
                           "--max-steps", "2", "--eval-every", "2", "--eval-pieces", "4", "--threads", "1",
                           "--max-minutes", "0"])
    assert code == 0, stderr
    return out


@pytest.mark.slow  # real (short) training runs
@pytest.mark.parametrize("command", sorted(DEEP_FLAGS))
@settings(FUZZ, max_examples=int(os.environ.get("DIVCFG_FUZZ_EXAMPLES", 6)))
@given(data=st.data())
def test_fuzzed_short_training_runs_end_in_exit_0_or_one_error_line(tiny_data_dir, tiny_base_run, command, data):
    out = tiny_base_run.parent / f"deep_{len(INVOCATIONS)}"
    if command == "pretrain":
        argv = ["pretrain", "--preset", "tiny", "--data-dir", str(tiny_data_dir), "--out", str(out),
                "--max-steps", "2", "--eval-every", "1", "--eval-pieces", "4", "--threads", "1", "--max-minutes", "0.5"]
    else:
        argv = ["finetune", "--preset", "tiny", "--data-dir", str(tiny_data_dir), "--base", str(tiny_base_run),
                "--embedder", "", "--out", str(out), "--max-steps", "1", "--prompts-per-step", "2",
                "--max-new-tokens", "4", "--eval-prompts", "2", "--eval-max-new-tokens", "4", "--threads", "1",
                "--max-minutes", "0.5", "--no-progress"]
    for flag in data.draw(st.lists(st.sampled_from(DEEP_FLAGS[command]), min_size=1, max_size=4, unique=True)):
        value = data.draw(small_values, label=flag)
        if flag in ("--max-steps", "--max-new-tokens", "--eval-max-new-tokens", "--eval-prompts", "--batch-size",
                    "--prompts-per-step", "--group-size", "--n-layer", "--eval-pieces") and value.isdigit():
            value = str(min(int(value), 3))  # keep a real run short
        argv += [flag, value]
    code, stderr = invoke(argv)
    assert_contract(argv, code, stderr)


# --------------------------------------------------------------------------- the 20 mistakes of issue 13


def mistakes(w: dict) -> list[tuple[list[str], str]]:
    """(argv, a word the one error line must contain): the 11 that were handled, the 9 that were not."""
    m, s, a = str(w["missing"]), w["scratch"], str(w["a"])
    toml_gamma = w["root"] / "gamma.toml"
    toml_gamma.write_text('gamma = "3"\n')
    toml_unknown = w["root"] / "unknown.toml"
    toml_unknown.write_text("gamma = 3\nnot_a_field = 1\n")
    toml_bad = w["root"] / "bad.toml"
    toml_bad.write_text("gamma = \n")
    ft = ["finetune", "--preset", "tiny", "--base", m, "--data-dir", m, "--out", str(s / "ft")]
    smp = ["sample", "--checkpoint", a, "--prompt", "a reel", "--max-new-tokens", "4", "--out", str(s / "smp")]
    return [
        # handled before
        (["sample", "--checkpoint", m, "--prompt", "a reel"], "not found"),
        (["sample", "--checkpoint", str(w["corrupt"]), "--prompt", "a reel"], "corrupt"),
        (["sample", "--checkpoint", a, "--prompt", "  "], "empty prompt"),
        (ft + ["--config", str(toml_unknown)], "not_a_field"),
        (ft + ["--config", str(toml_bad)], "TOML"),
        (["pretrain", "--data-dir", m, "--out", str(s / "p")], "divcfg data"),
        (["merge", a, str(w["wide"]), "--lam", "0.5", "--out", str(s / "m")], "architecture"),
        (["merge", a, str(w["b"]), "--lam", "1.5", "--out", str(s / "m")], "--lam"),
        (["evaluate", "--preset", "tiny", "--base", m, "--lams", "0,half,1"], "--lams"),
        (["report", m], "evaluate"),
        (smp + ["--num-samples", "0"], "--num-samples"),
        # tracebacks before
        (smp + ["--cfg", "nan"], "--cfg"),
        (smp + ["--temperature", "nan"], "--temperature"),
        (smp + ["--top-k", "-1"], "--top-k"),
        (smp[:-4] + ["--max-new-tokens", "-5"], "--max-new-tokens"),
        (ft + ["--config", str(toml_gamma)], "gamma"),
        (ft + ["--config", str(w["root"] / "config_folder")], "folder"),
        (["pretrain", "--data-dir", m, "--eval-every", "0"], "--eval-every"),
        (["pretrain", "--data-dir", m, "--batch-size", "0"], "--batch-size"),
        (ft + ["--lr", "nan"], "--lr"),
    ]


def test_the_twenty_mistakes_each_end_in_one_line(world):
    cases = mistakes(world)
    assert len(cases) == 20
    for argv, word in cases:
        code, stderr = invoke(argv)
        lines = stderr.strip().splitlines()
        assert code == 2 and "Traceback" not in stderr, f"{argv}: {stderr}"
        assert len(lines) == 1 and lines[0].startswith("error:") and word in lines[0], f"{argv}: {stderr}"


def test_bool_from_toml_string_is_refused_not_true(world):
    path = world["root"] / "bf16.toml"
    path.write_text('bf16 = "false"\n')
    code, stderr = invoke(["pretrain", "--data-dir", str(world["missing"]), "--config", str(path)])
    assert code == 2 and "bf16" in stderr and "false" in stderr and "no quotes" in stderr


@pytest.mark.parametrize("args, word", [
    (["sample", "--checkpoint", "x", "--prompt", "a reel", "--cfg", "nan"], "--cfg"),
    (["finetune", "--lr", "nan"], "--lr"),
    (["pretrain", "--config", "."], "folder"),
])
def test_real_entry_point_prints_one_line(args, word):
    r = subprocess.run([sys.executable, "-m", "divcfg.cli", *args], capture_output=True, text=True, timeout=300)
    INVOCATIONS.append((args, r.returncode, r.stderr.strip() or None))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("error:") and word in r.stderr


def test_ctrl_c_mentions_resume_only_where_there_is_a_resume_flag(monkeypatch, world):
    import divcfg.merging
    import divcfg.pretrain

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(divcfg.pretrain, "run", interrupted)
    monkeypatch.setattr(divcfg.merging, "run", interrupted)
    err = io.StringIO()
    with redirect_stderr(err):
        assert main(["pretrain"]) == 130
    assert "--resume" in err.getvalue()
    err = io.StringIO()
    with redirect_stderr(err):
        assert main(["merge", "a", "b", "--lam", "0.5", "--out", "o"]) == 130
    assert "--resume" not in err.getvalue() and "interrupted" in err.getvalue()
