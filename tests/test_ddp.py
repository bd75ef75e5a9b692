"""Data-parallel fine-tuning, for real: 2 processes with the gloo backend on the CPU.

- the loss of ``divcfg.finetune.loop.update`` under DDP gives, after the all-reduce, the gradient
  of a 1-process run on the union batch (different generated lengths per rank, so the global
  token normalisation matters; the REINFORCE term included);
- ``divcfg finetune --num-processes 2``: both ranks step (each rank's own random streams advanced),
  one checkpoint and one metrics row per step are written (by the main process), the effective
  batch is recorded, and ``--resume`` continues the run.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from divcfg.models.generator import save_generator
from divcfg.models.transformer import ModelConfig, MusicTransformer

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

GRAD_WORKER = textwrap.dedent('''
    """Gradients of one update on the union batch: 1 process (all rows) or 2 (half each, DDP)."""
    import sys, types, torch
    torch.set_num_threads(1)
    from divcfg.finetune.distributed import DataParallel
    from divcfg.finetune.loop import update
    from divcfg.finetune.quick_eval import VocabRestriction, generated_mask
    from divcfg.finetune.setup import make_optimizer
    from divcfg.models.transformer import ModelConfig, MusicTransformer

    torch.manual_seed(0)
    model = MusicTransformer(ModelConfig(vocab_size=40, n_layer=2, n_head=2, d_model=16, n_prefix=2, max_len=12,
                                         dropout=0.0, pad_id=0, bos_id=1, eos_id=2)).eval()
    P, G, W, T = 2, 2, 2, 8                       # per rank: P prompts x G generations
    g = torch.Generator().manual_seed(1)
    x = torch.randint(3, 40, (W * P * G, T), generator=g)
    x[:, 0] = 1
    cond = torch.randn(W * P * G, 384, generator=g)
    lengths = torch.tensor([8, 3, 5, 2, 8, 8, 7, 6])   # rank 0 has far fewer tokens than rank 1
    mask = generated_mask(lengths, T)
    restrict = VocabRestriction(40, [0, 1])
    targets = restrict.columns(torch.roll(x, -1, 1).clamp(min=3))
    teacher_lp = torch.log_softmax(torch.randn(W * P * G, T, 38, generator=g), -1)
    adv = torch.randn(W * P, G, generator=g)
    cfg = types.SimpleNamespace(updates_per_batch=1, divergence="reverse_kl", jsd_beta=0.5, beta=2.0,
                                pg_normalise="token", grad_clip=1e9, lr=1e-3, weight_decay=0.0, warmup_steps=0)
    opt, sched = make_optimizer(model, cfg)
    dp = DataParallel(torch.device("cpu"))
    rows = slice(0, W * P * G) if dp.world == 1 else slice(dp.rank * P * G, (dp.rank + 1) * P * G)
    prows = slice(0, W * P) if dp.world == 1 else slice(dp.rank * P, (dp.rank + 1) * P)
    update(types.SimpleNamespace(model=model), x[rows], cond[rows], targets[rows], mask[rows], teacher_lp[rows],
           adv[prows], cfg, opt, sched, False, restrict, lambda *a: None, dp.wrap(model), dp)
    if dp.is_main:
        torch.save({n: p.grad for n, p in model.named_parameters() if p.grad is not None}, sys.argv[1])
    dp.close()
''')


def test_ddp_gradients_equal_one_process_on_the_union_batch(tmp_path):
    script = tmp_path / "grad_worker.py"
    script.write_text(GRAD_WORKER)
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "one.pt")], env=ENV, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script), str(tmp_path / "two.pt")], env=ENV, cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    g1, g2 = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert g1.keys() == g2.keys() and len(g1) > 10
    for n in g1:
        assert torch.allclose(g1[n], g2[n], atol=1e-6, rtol=1e-4), (n, (g1[n] - g2[n]).abs().max())
    assert max(float(g.abs().max()) for g in g1.values()) > 1e-3     # non-trivial gradients


@pytest.fixture(scope="module")
def base_ckpt(tiny_data_dir, tmp_path_factory):
    from divcfg.music.tokenizer import load_tokenizer, special_ids
    tok = load_tokenizer(tiny_data_dir)
    ids = special_ids(tok)
    torch.manual_seed(0)
    model = MusicTransformer(ModelConfig(vocab_size=len(tok), n_layer=1, n_head=2, d_model=32, n_prefix=2,
                                         max_len=32, dropout=0.0, pad_id=ids["pad"], bos_id=ids["bos"],
                                         eos_id=ids["eos"]))
    path = tmp_path_factory.mktemp("base") / "checkpoint"
    save_generator(path, model, {"provenance": {"note": "tiny random test base"}}, tiny_data_dir / "tokenizer.json")
    return path


def run_cli(data_dir, base, out, *extra, timeout=400):
    args = [sys.executable, "-m", "divcfg", "finetune", "--preset", "tiny", "--data-dir", str(data_dir),
            "--base", str(base), "--embedder", "", "--out", str(out), "--gamma", "3", "--prompts-per-step", "2",
            "--max-new-tokens", "12", "--eval-every", "0", "--eval-prompts", "2", "--eval-max-new-tokens", "12",
            "--eval-teacher", "false", "--ckpt-every", "1", "--threads", "1", "--no-progress", *extra]
    res = subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout[-1500:] + res.stderr[-3000:]
    return res


def test_two_process_run_steps_both_ranks_writes_one_checkpoint_and_resumes(tiny_data_dir, base_ckpt, tmp_path):
    out = tmp_path / "run"
    res = run_cli(tiny_data_dir, base_ckpt, out, "--num-processes", "2", "--max-steps", "2")
    assert "2 prompts × 2 generations × 2 process(es) = 8 generations per step" in res.stdout
    config = json.loads((out / "checkpoint" / "config.json").read_text())
    assert config["num_processes"] == 2 and config["effective_batch"]["generations"] == 8
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint"]
    state = torch.load(out / "checkpoint" / "training_state.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rank_rng"]) == 2
    # both ranks sampled: each rank's sampling stream moved on from its seed, and they differ
    from divcfg.finetune.distributed import rank_seed
    for rank, rng in enumerate(state["rank_rng"]):
        fresh = torch.Generator().manual_seed(rank_seed(0, rank)).get_state()
        assert not torch.equal(rng["sample_rng"], fresh), rank
    assert rng["python_rng"] != state["rank_rng"][0]["python_rng"]

    run_cli(tiny_data_dir, base_ckpt, out, "--num-processes", "2", "--max-steps", "3", "--resume")
    steps = [json.loads(line)["step"] for line in open(out / "metrics.jsonl") if '"kl/teacher"' in line]
    assert steps == [1, 2, 3]                     # one row per step: only the main process logs
    assert json.loads((out / "checkpoint" / "config.json").read_text())["step"] == 3
    assert json.loads((out / "DONE.json").read_text())["steps_done"] == 3
