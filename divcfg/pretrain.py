"""`divcfg pretrain`: train the base text-to-music transformer with condition dropout.

Objective (per token, teacher forcing): ``NLL = -1/N Σ_t log p_θ(y_t | c, y_<t)`` where the
condition ``c`` is the row's caption embedding, replaced by the learned null with probability
``cond_dropout`` so the same weights also learn ``p_θ(y | ∅)`` for classifier-free guidance.
Validation reports both the conditional and the unconditional NLL; their gap is how much the
model uses the prompt.

The run is bounded by ``max_steps``: the learning rate follows linear warm-up then cosine decay
over ``step / max_steps`` (a function of the step only, so the result does not depend on the
machine's speed). ``max_minutes`` is only a safety cap on the training time: a run it stops before
``max_steps`` warns on stderr and records ``cut_short`` (``divcfg.stages``) in its checkpoint's
``config.json`` and in ``<out>/DONE.json``, the completion marker written as the very last act.

Checkpoints are atomic; ``--resume`` restores weights, optimizer, RNG, the batch queue, step and
elapsed time, and truncates ``metrics.jsonl`` to what the checkpoint had seen, so a run killed at
any moment and resumed equals an uninterrupted one. Architecture flags cannot change on resume.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from divcfg.checkpoint import load_training_state, resolve_checkpoint_dir
from divcfg.config import add_config_arguments, field, resolve_config
from divcfg.errors import UserError
from divcfg.models.base import check_device
from divcfg.models.generator import load_generator, save_generator
from divcfg.models.transformer import ModelConfig, MusicTransformer
from divcfg.prompts import embed_texts
from divcfg.provenance import file_hash, provenance, seed_everything
from divcfg.sampling import bf16_supported
from divcfg.stages import (TimeCap, clear_finished, mark_finished, metrics_size, python_rng_state,
                           set_python_rng_state, truncate_metrics)


@dataclass
class PretrainConfig:
    data_dir: str = field("data/small", "data set folder written by `divcfg data`")
    out: str = field("runs/small/base", "run folder (checkpoint/ and metrics.jsonl go inside)")
    seed: int = field(0, "random seed", ge=0)
    n_layer: int = field(4, "transformer layers", ge=1)
    n_head: int = field(4, "attention heads", ge=1)
    d_model: int = field(256, "model width (a multiple of --n-head)", ge=1)
    n_prefix: int = field(4, "number of prefix positions the text condition is projected to", ge=1)
    dropout: float = field(0.1, "dropout inside the transformer", ge=0, lt=1)
    cond_dropout: float = field(0.2, "probability of replacing a row's condition by the learned null", ge=0, le=1)
    max_len: int = field(640, "maximum token positions (BOS + piece + EOS); longer pieces are cropped", ge=8)
    batch_size: int = field(32, "pieces per step", ge=1)
    lr: float = field(1e-3, "peak learning rate (AdamW)", gt=0)
    weight_decay: float = field(0.1, "AdamW weight decay on matrices", ge=0)
    warmup_steps: int = field(100, "linear warm-up steps", ge=0)
    max_steps: int = field(660, "train this many steps (the lr schedule is a function of the step only)", ge=0)
    max_minutes: float = field(60.0, "safety cap on training time; a run it stops is recorded as cut_short "
                               "(0 = none)", ge=0)
    grad_clip: float = field(1.0, "gradient-norm clip", gt=0)
    eval_every: int = field(250, "validate every N steps", ge=1)
    eval_pieces: int = field(256, "validation pieces per evaluation", ge=1)
    ckpt_every: int = field(100, "checkpoint every N steps", ge=1)
    bf16: bool = field(True, "bf16 autocast where the CPU/GPU supports it")
    init: str = field("", "start from this base checkpoint's weights (same architecture and vocabulary), with a "
                          "fresh optimizer and schedule, e.g. to continue a base on new captions ('' = random init)")
    device: str = field("cpu", "torch device (cpu, cuda, cuda:1, ...)")
    threads: int = field(0, "torch CPU threads (0 = all cores)", ge=0)
    preset: str = field("small", "preset this config came from (informational)")

    def validate(self) -> None:
        """Every field's type and declared range, then the cross-field checks (one-line UserError)."""
        from divcfg.config import validate_config
        validate_config(self)
        if self.d_model % self.n_head:
            raise UserError(f"--d-model {self.d_model} is not a multiple of --n-head {self.n_head}: "
                            f"pick e.g. --d-model {self.n_head * max(1, round(self.d_model / self.n_head))}")


# Step budgets: what the former time boxes reached on the idle 2-core machine (about 28 steps/min
# for the small model with 1 thread), so the published runs are reproduced whatever the load;
# max_minutes is a safety cap of ~2.5x the idle time.
PRESETS: dict[str, dict] = {
    "tiny": dict(data_dir="data/tiny", out="runs/tiny/base", n_layer=2, n_head=2, d_model=64, n_prefix=2,
                 batch_size=16, max_steps=150, max_minutes=10.0, eval_every=50, eval_pieces=64,
                 ckpt_every=50, warmup_steps=20, lr=2e-3, preset="tiny"),
    # the former 5-minute box at 2 threads: ~180 steps (26 steps/min with 1 thread under load, ~30 idle)
    "demo": dict(data_dir="data/small", out="runs/demo/base", max_steps=180, max_minutes=15.0, ckpt_every=60,
                 preset="demo"),
    # the README's base: 659 steps (15 min + a resume to 24 min)
    "small": dict(),
    "full": dict(data_dir="data/full", out="runs/full/base", n_layer=6, n_head=8, d_model=384,
                 max_minutes=0.0, max_steps=40000, batch_size=48, lr=6e-4, ckpt_every=1000,
                 device="cuda", preset="full"),
}

ARCHITECTURE = ("vocab_size", "n_layer", "n_head", "d_model", "n_prefix", "max_len", "dropout")


class PieceBatcher:
    """Random batches of ``[BOS] piece [EOS]`` rows (PAD-padded) with a random caption variant each."""

    def __init__(self, pieces: list[dict], cond_table: torch.Tensor, caption_index: list[list[int]],
                 ids: dict, max_len: int):
        self.pieces, self.cond_table, self.caption_index = pieces, cond_table, caption_index
        self.pad, self.bos, self.eos = ids["pad"], ids["bos"], ids["eos"]
        self.max_len = max_len
        self.device = cond_table.device

    def length_bucketed(self, batch_size: int, rng: random.Random, pool_batches: int = 16) -> list[list[int]]:
        """``pool_batches`` random batches whose members have similar lengths (less padding):
        draw ``batch_size·pool_batches`` pieces, sort by length, cut, shuffle the batches."""
        pool = sorted((rng.randrange(len(self.pieces)) for _ in range(batch_size * pool_batches)),
                      key=lambda i: len(self.pieces[i]["tokens"]))
        batches = [pool[i: i + batch_size] for i in range(0, len(pool), batch_size)]
        rng.shuffle(batches)
        return batches

    def rows(self, idx: list[int], rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
        seqs = []
        for i in idx:
            toks = self.pieces[i]["tokens"]
            body = toks[: self.max_len - 2]
            seqs.append([self.bos] + body + ([self.eos] if len(body) == len(toks) else []))
        T = max(len(s) for s in seqs)
        x = torch.full((len(seqs), T), self.pad, dtype=torch.long)
        for r, s in enumerate(seqs):
            x[r, : len(s)] = torch.tensor(s)
        cond = self.cond_table[[rng.choice(self.caption_index[i]) for i in idx]]
        return x, cond


def token_nll(model: MusicTransformer, x: torch.Tensor, cond: torch.Tensor | None,
              null_mask: torch.Tensor | None, pad_id: int) -> torch.Tensor:
    logits = model(x[:, :-1], cond, null_mask)
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), ignore_index=pad_id)


def _caption_table(splits: dict[str, list[dict]], data_dir: Path) -> tuple[torch.Tensor, dict[str, list[list[int]]]]:
    texts: list[str] = []
    where: dict[str, int] = {}
    index: dict[str, list[list[int]]] = {}
    for name, pieces in splits.items():
        index[name] = []
        for p in pieces:
            row = []
            for c in p["captions"]:
                if c not in where:
                    where[c] = len(texts)
                    texts.append(c)
                row.append(where[c])
            index[name].append(row)
    return embed_texts(texts, data_dir), index


@torch.no_grad()
def validate(model, batcher: PieceBatcher, n: int, batch_size: int, autocast: bool) -> dict[str, float]:
    model.eval()
    rng = random.Random(0)
    idx = list(range(min(n, len(batcher.pieces))))
    tot_c = tot_u = 0.0
    count = 0
    for s in range(0, len(idx), batch_size):
        b = idx[s: s + batch_size]
        x, cond = batcher.rows(b, rng)
        cond = batcher.cond_table[[batcher.caption_index[i][0] for i in b]]
        x, cond = x.to(batcher.device), cond.to(batcher.device)
        with torch.autocast(batcher.device.type, dtype=torch.bfloat16, enabled=autocast):
            tot_c += token_nll(model, x, cond, None, batcher.pad).item() * len(b)
            tot_u += token_nll(model, x, None, None, batcher.pad).item() * len(b)
        count += len(b)
    model.train()
    return {"val/nll_cond": tot_c / count, "val/nll_uncond": tot_u / count,
            "val/cond_gain": (tot_u - tot_c) / count}


def autocast_bf16(enabled: bool, device: torch.device) -> bool:
    """Whether bf16 autocast is on: asked for and supported by the CPU (mkldnn) or the GPU."""
    if not enabled:
        return False
    return bf16_supported(device.type)


def _check_architecture(model: MusicTransformer, mcfg: ModelConfig, ckpt_dir: Path, flag: str = "--resume") -> None:
    old, new = model.cfg.to_dict(), mcfg.to_dict()
    for k in ARCHITECTURE:
        if old.get(k) != new.get(k):
            what = "the data set's vocabulary size" if k == "vocab_size" else f"--{k.replace('_', '-')}"
            fix = ("start a new run with another --out" if flag == "--resume"
                   else "give a checkpoint of that architecture")
            raise UserError(f"{flag} with a different {what} ({new.get(k)!r}) than the checkpoint in '{ckpt_dir}' "
                            f"({old.get(k)!r}): pass the same value, or {fix}")


def train(cfg: PretrainConfig, resume: bool = False) -> Path:
    from divcfg.domains.base import load_domain

    domain = load_domain(data_dir=cfg.data_dir)   # the music testbed's data set (checked to exist)
    init_dir = resolve_checkpoint_dir(cfg.init) if cfg.init else None   # checked before the data is loaded
    data_dir = domain.data_dir
    device = check_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    ckpt_dir = out / "checkpoint"
    seed_everything(cfg.seed)
    tok = domain.tokenizer()
    ids = domain.special_ids()
    splits = {"train": domain.load_split("train"), "val": domain.load_split("val")}
    if not splits["train"] or not splits["val"]:
        raise UserError(f"data set '{data_dir}' has an empty train or val split: rebuild it with `divcfg data --force`")
    cond_table, caption_index = _caption_table(splits, data_dir)
    cond_table = cond_table.to(device)
    train_b = PieceBatcher(splits["train"], cond_table, caption_index["train"], ids, cfg.max_len)
    val_b = PieceBatcher(splits["val"], cond_table, caption_index["val"], ids, cfg.max_len)

    mcfg = ModelConfig(vocab_size=len(tok), n_layer=cfg.n_layer, n_head=cfg.n_head, d_model=cfg.d_model,
                       n_prefix=cfg.n_prefix, max_len=cfg.max_len, dropout=cfg.dropout,
                       pad_id=ids["pad"], bos_id=ids["bos"], eos_id=ids["eos"])
    rng = random.Random(cfg.seed)
    step, elapsed = 0, 0.0
    queue: list[list[int]] = []   # the length-bucketed batches still to train on (saved for resume)
    has_ckpt = (ckpt_dir / "model.safetensors").exists() or (out / "checkpoint.old" / "model.safetensors").exists()
    if resume and has_ckpt:
        model, _ = load_generator(ckpt_dir, device=cfg.device)
        _check_architecture(model, mcfg, ckpt_dir)
        model.train()
        state = load_training_state(ckpt_dir)
        if state is None:
            raise UserError(f"'{ckpt_dir}' has no training state to resume from: start a new run with another --out")
    else:
        if resume:
            print(f"no checkpoint in '{ckpt_dir}' yet: starting from scratch")
        model, state = MusicTransformer(mcfg).to(device), None
        if init_dir is not None:  # after the random init, so the run's RNG stream is a fresh run's
            model, _ = load_generator(init_dir, device=cfg.device)
            _check_architecture(model, mcfg, init_dir, flag="--init")
            model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        step, elapsed = state["step"], state["elapsed"]
        set_python_rng_state(rng, state["python_rng"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        queue = [list(b) for b in state.get("queue", [])]
        print(f"resuming from step {step} ({elapsed / 60:.1f} min done)")

    autocast = autocast_bf16(cfg.bf16, device)
    manifest_hash = file_hash(data_dir / "manifest.json")
    record = {"pretrain": dataclasses.asdict(cfg), "bf16": autocast, "data_manifest_hash": manifest_hash,
              "data_dir": str(data_dir), "parameters": model.num_parameters(),
              "init_weights_sha256": file_hash(init_dir / "model.safetensors") if init_dir else None}
    out.mkdir(parents=True, exist_ok=True)
    clear_finished(out)
    metrics_file = out / "metrics.jsonl"
    # a fresh run starts an empty log; a resume drops the rows a killed run logged after its checkpoint
    truncate_metrics(metrics_file, step, state.get("metrics_bytes") if state is not None else 0)
    metrics_f = open(metrics_file, "a")
    time_cap = TimeCap(cfg.max_minutes)

    def lr_at() -> float:
        """Warm-up, then cosine from lr to lr/10 over step / max_steps (steps only)."""
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step / max(cfg.max_steps, 1), 1.0))))

    def save(val: dict | None, metrics_bytes: int | None = None, cut_short: dict | None = None):
        metrics_f.flush()
        conf = {**record, "step": step, "elapsed_s": elapsed, "val": val, "cut_short": cut_short,
                "provenance": provenance(cfg.seed, stage="pretrain")}
        ts = {"optimizer": opt.state_dict(), "step": step, "elapsed": elapsed,
              "python_rng": python_rng_state(rng), "torch_rng": torch.get_rng_state(),
              "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
              "queue": queue, "metrics_bytes": metrics_size(metrics_file) if metrics_bytes is None else metrics_bytes}
        save_generator(ckpt_dir, model, conf, data_dir / "tokenizer.json", ts)

    print(f"model: {model.num_parameters() / 1e6:.2f}M parameters, vocab {len(tok)}, bf16={autocast}, "
          f"{len(splits['train'])} train / {len(splits['val'])} val pieces, device {device}")
    model.train()
    val = None
    bar = tqdm(total=cfg.max_steps, initial=step, desc="pretrain", dynamic_ncols=True,
               mininterval=0.5 if sys.stderr.isatty() else 30.0)
    tokens_seen, t_last = 0, time.time()
    while step < cfg.max_steps and not time_cap.reached(elapsed):
        t0 = time.time()
        if not queue:
            queue = train_b.length_bucketed(cfg.batch_size, rng)
        idx = queue.pop()
        x, cond = train_b.rows(idx, rng)
        x = x.to(device)
        null_mask = (torch.rand(len(idx)) < cfg.cond_dropout).to(device)  # CPU generator on every device
        for g in opt.param_groups:
            g["lr"] = lr_at()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = token_nll(model, x, cond, null_mask, ids["pad"])
        if not torch.isfinite(loss):
            raise UserError(f"loss became {loss.item()} at step {step}: lower --lr and rerun with --resume "
                            f"(the last checkpoint is kept)")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        elapsed += time.time() - t0
        n_tok = int((x[:, 1:] != ids["pad"]).sum())
        tokens_seen += n_tok
        if step % 10 == 0:
            tps = tokens_seen / max(time.time() - t_last, 1e-9)
            tokens_seen, t_last = 0, time.time()
            bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{tps:.0f}", lr=f"{lr_at():.1e}", refresh=False)
            metrics_f.write(json.dumps({"step": step, "train/nll": loss.item(), "grad_norm": float(gnorm),
                                        "lr": lr_at(), "tokens_per_s": tps, "elapsed_s": elapsed}) + "\n")
        if step % cfg.eval_every == 0:
            val = validate(model, val_b, cfg.eval_pieces, cfg.batch_size, autocast)
            metrics_f.write(json.dumps({"step": step, **val}) + "\n")
            metrics_f.flush()
            bar.write(f"step {step}: val nll cond {val['val/nll_cond']:.3f} uncond {val['val/nll_uncond']:.3f}")
        if step % cfg.ckpt_every == 0:
            save(val)
        bar.update(1)
    bar.close()
    cut_short = time_cap.cut_short("pretrain", step, cfg.max_steps)
    metrics_f.flush()
    before_end = metrics_size(metrics_file)  # a resume after the final save rewrites the final row once
    val = validate(model, val_b, cfg.eval_pieces, cfg.batch_size, autocast)
    metrics_f.write(json.dumps({"step": step, **val}) + "\n")
    save(val, metrics_bytes=before_end, cut_short=cut_short)
    metrics_f.close()
    mark_finished(out, "pretrain", step, cfg.max_steps, cut_short, seed=cfg.seed, elapsed_s=elapsed, val=val,
                  checkpoint=str(ckpt_dir))
    print(f"done: step {step}, {elapsed / 60:.1f} min, val nll cond {val['val/nll_cond']:.3f} "
          f"uncond {val['val/nll_uncond']:.3f} -> {ckpt_dir}")
    return ckpt_dir


def add_arguments(parser) -> None:
    add_config_arguments(parser, PretrainConfig, PRESETS, skip=("preset",))
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")


def run(args) -> None:
    cfg = resolve_config(PretrainConfig, args, PRESETS, default_preset="small")
    train(cfg, resume=args.resume)
