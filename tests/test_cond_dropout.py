"""Condition dropout trains the unconditional branch ``p(y | ∅)`` that classifier-free guidance needs.

Three tiny pre-training runs on the real tiny data set from the same seed (so the same initial
weights, weight decay off): 0 steps (the initial model), 60 steps with ``cond_dropout`` 0.5 and 60
steps with ``cond_dropout`` 0. Under dropout the learned null prefix moves and the unconditional
NLL falls far below the initial model's; without dropout no gradient ever reaches the null prefix,
which stays bit-identical to its initial value.
"""

from __future__ import annotations

import pytest
import torch

from divcfg.models.generator import load_generator
from divcfg.music.dataset import load_split
from divcfg.music.tokenizer import load_tokenizer, special_ids
from divcfg.pretrain import PRESETS, PretrainConfig, token_nll, train


def _run(data_dir, out, cond_dropout: float, steps: int = 60):
    values = {**PRESETS["tiny"], "data_dir": str(data_dir), "out": str(out), "threads": 1, "max_minutes": 0.0,
              "max_steps": steps, "eval_every": 60, "ckpt_every": 60, "weight_decay": 0.0,
              "cond_dropout": cond_dropout}
    train(PretrainConfig(**values))
    model, config = load_generator(out)
    assert config["step"] == steps
    return model.eval()


@pytest.mark.slow  # three short training runs, about a minute
def test_unconditional_branch_learns_under_condition_dropout(tiny_data_dir, tmp_path):
    torch.set_num_threads(1)
    initial = _run(tiny_data_dir, tmp_path / "init", 0.5, steps=0)
    with_dropout = _run(tiny_data_dir, tmp_path / "p05", 0.5)
    without = _run(tiny_data_dir, tmp_path / "p0", 0.0)
    assert torch.equal(without.null_prefix, initial.null_prefix)         # no dropout: never trained
    assert not torch.allclose(with_dropout.null_prefix, initial.null_prefix, atol=1e-3)  # dropout: trained

    ids = special_ids(load_tokenizer(tiny_data_dir))
    max_len = initial.cfg.max_len
    rows = [[ids["bos"]] + p["tokens"][: max_len - 2] + [ids["eos"]] for p in load_split(tiny_data_dir, "val")
            + load_split(tiny_data_dir, "test")[:16]]
    x = torch.full((len(rows), max(map(len, rows))), ids["pad"], dtype=torch.long)
    for i, r in enumerate(rows):
        x[i, : len(r)] = torch.tensor(r)
    with torch.no_grad():  # cond=None: every row takes the null prefix
        before = float(token_nll(initial, x, None, None, ids["pad"]))
        after = float(token_nll(with_dropout, x, None, None, ids["pad"]))
    assert after < before - 1.0, (before, after)
