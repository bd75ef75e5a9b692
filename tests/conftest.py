"""Shared fixtures. ``tiny_data_dir``: the ``tiny`` data preset (~200 real tunes from a few
music21 corpus files: O'Neill, Ryan, Essen, Bach), built once per test session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    """Folder with manifest.json, tokenizer.json, train/val/test.jsonl of the tiny preset."""
    from divcfg.music.corpus import build

    root = tmp_path_factory.mktemp("data")
    return build("tiny", root, workers=2, quiet=True)


def pytest_terminal_summary(terminalreporter):
    """How many fuzzed CLI invocations ran (tests/test_cli_fuzz.py) and how they ended."""
    import sys
    fuzz = sys.modules.get("test_cli_fuzz") or sys.modules.get("tests.test_cli_fuzz")
    runs = getattr(fuzz, "INVOCATIONS", None)
    if not runs:
        return
    ok = sum(1 for _, code, _ in runs if code == 0)
    one_line = sum(1 for _, code, line in runs if code == 2 and line)
    terminalreporter.write_line(f"fuzzed CLI invocations: {len(runs)} (exit 0: {ok}, exit 2 with one error line: "
                                f"{one_line}, other: {len(runs) - ok - one_line})")


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test (the machine is shared), restored afterwards.
    Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def cond_model():
    """A tiny built-in transformer (2 layers, d=32, vocab 40, max_len 48, seed 0) whose condition
    projection is scaled ×20 so the condition matters: the sampler tests' model."""
    import torch

    from divcfg.models.transformer import ModelConfig, MusicTransformer
    torch.manual_seed(0)
    m = MusicTransformer(ModelConfig(vocab_size=40, n_layer=2, n_head=2, d_model=32, n_prefix=2,
                                     max_len=48, dropout=0.0))
    with torch.no_grad():
        for p in m.cond_proj.parameters():
            p.mul_(20)
    return m.eval()
