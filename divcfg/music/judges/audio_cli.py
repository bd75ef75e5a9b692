"""``divcfg embedder train|eval --modality audio``: train the audio diversity embedder ``E`` on the
testbed's corpus rendered by the synthesiser, and measure it on the held-out split.

Objective: the symbolic E's NT-Xent (``contrastive.info_nce``, in-batch negatives, temperature
τ): a batch holds B clips, each gives two non-overlapping, independently augmented chunks
(``audio_data.AudioPairSampler``), and each view must pick its partner out of the 2B−1 others.
Training is bounded by steps (warm-up then cosine, a function of the step only); ``--minutes`` is a
safety cap recorded as ``cut_short``; ``--resume`` continues the last checkpoint exactly (weights,
optimiser, RNGs); the run ends with ``DONE.json``.

Outputs in ``--out``: the checkpoint (``model.safetensors``, ``config.json`` with provenance),
``metrics.jsonl``, ``eval.json`` (held-out chunk and half-clip retrieval, invariance figures, the
untrained log-mel stand-in's half-clip retrieval for comparison).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from divcfg.embedders.audio import (KIND, AudioAugment, AudioEmbedder, AudioEmbedderConfig, load_audio_embedder,
                                    save_audio_embedder)
from divcfg.music.judges.audio_data import (AudioPairSampler, audio_half_retrieval, audio_invariance, audio_retrieval,
                                         render_split, stand_in_embed)
from divcfg.errors import UserError

DEFAULT_OUT = "runs/audio/embedder"

# named presets: front end, ViT size and how long to train. small: 1,300 steps of 48 clip pairs, 15
# CPU-minutes of one thread on the shared 2-core machine (16 min wall; 800 steps gave held-out top-1
# 0.085, 1,300 gave 0.135); its cap is about 3x that. paper: the paper's 12 layers / 6 heads (a GPU run).
PRESETS = {
    "tiny": dict(vit="tiny", n_fft=1024, hop=320, n_mels=64, chunk_frames=100, out_dim=32, batch_size=16, lr=1e-3,
                 steps=40, minutes=5.0, max_train_pieces=200),
    "small": dict(vit="small", n_fft=1024, hop=320, n_mels=96, chunk_frames=200, out_dim=128, batch_size=48,
                  lr=1e-3, steps=1300, minutes=50.0, max_train_pieces=2000),
    "paper": dict(vit="paper", n_fft=1024, hop=320, n_mels=128, chunk_frames=256, out_dim=128, batch_size=256,
                  lr=3e-4, steps=20_000, minutes=0.0, max_train_pieces=None),
}
MEL_RANGE = (60.0, 4000.0)   # Hz: the melodies' fundamentals and first partials (all presets)


def preset_config(name: str, sample_rate: int = 16000) -> AudioEmbedderConfig:
    p = PRESETS[name]
    return AudioEmbedderConfig(vit=p["vit"], sample_rate=sample_rate, n_fft=p["n_fft"], hop=p["hop"],
                               n_mels=p["n_mels"], f_min=MEL_RANGE[0], f_max=MEL_RANGE[1],
                               chunk_frames=p["chunk_frames"], out_dim=p["out_dim"])


def train_audio_embedder(clips, cfg: AudioEmbedderConfig, *, augment: AudioAugment | None, steps: int,
                         minutes: float, batch_size: int, lr: float, tau: float = 0.1, seed: int = 0,
                         progress: bool = True, device: str = "cpu", resume_from: tuple[dict, dict] | None = None,
                         ckpt_every: int = 0, on_checkpoint=None, out: str = "the output folder"
                         ) -> tuple[AudioEmbedder, dict]:
    """Train the audio ``E`` for ``steps`` steps on ``clips`` (mono arrays at ``cfg.sample_rate``) with
    the shared contrastive loop (``divcfg.embedders.contrastive.fit_contrastive``); the sampler's
    torch generator (augmentations) and numpy generator (chunk choice) are both in the training
    state. Returns (E in eval mode, history with the final ``training_state``)."""
    from divcfg.embedders.contrastive import fit_contrastive
    torch.manual_seed(seed)
    E = AudioEmbedder(cfg)
    sampler = AudioPairSampler(E, clips, augment, seed=seed)

    def sampler_state() -> dict:
        return {"sampler_rng": json.dumps(sampler.rng.bit_generator.state), "sampler_gen": sampler.gen.get_state()}

    def load_sampler_state(state: dict) -> None:
        sampler.gen.set_state(state["sampler_gen"])
        sampler.rng.bit_generator.state = json.loads(state["sampler_rng"])

    E, hist = fit_contrastive(E, sampler, name="audio embedder", steps=steps, minutes=minutes,
                              batch_size=batch_size, lr=lr, tau=tau, device=device,
                              warmup=min(50, max(1, steps // 10)), features=lambda x: E.features(x),
                              sampler_state=sampler_state, load_sampler_state=load_sampler_state,
                              progress=progress, resume_from=resume_from, ckpt_every=ckpt_every,
                              on_checkpoint=on_checkpoint, out=out)
    hist["n_train_clips"] = len(sampler.index)
    return E, hist


def evaluate_audio(E: AudioEmbedder, clips, n_pieces: int, seed: int = 0) -> dict:
    """Held-out chunk retrieval, half-clip retrieval (E and the untrained stand-in), invariance."""
    cs = E.cfg.chunk_samples
    return {"retrieval": audio_retrieval(E, clips, n_pieces, seed),
            "retrieval_halves": audio_half_retrieval(E.embed_waveforms, clips, cs, n_pieces, seed),
            "retrieval_halves_stand_in": audio_half_retrieval(stand_in_embed(E.cfg.sample_rate), clips, cs,
                                                              n_pieces, seed),
            "invariance": audio_invariance(E, clips, n_pieces, seed)}


def print_eval(res: dict) -> None:
    r, h, s = res["retrieval"], res["retrieval_halves"], res["retrieval_halves_stand_in"]
    print(f"held-out retrieval: top-1 {r['top1']:.3f}, top-5 {r['top5']:.3f} among {r['n_chunks']} chunks "
          f"of {r['n_pieces']} clips (chance {r['chance']:.4f})")
    print(f"held-out half-clip retrieval (halves embedded whole): top-1 {h['top1']:.3f}, top-5 {h['top5']:.3f} "
          f"among {h['n_chunks']} halves (chance {h['chance']:.4f}); untrained log-mel stand-in: top-1 "
          f"{s['top1']:.3f}, top-5 {s['top5']:.3f}")
    print("invariance (mean 1-cos to the original chunk): " +
          ", ".join(f"{k} {v:.3f}" for k, v in res["invariance"].items()))


# ---------------------------------------------------------------------------------------------
# CLI (flags added to `divcfg embedder train|eval` by diversity_cli)


class DefaultOut(str):
    """The symbolic ``--out`` default, marked as not given (so the audio E goes to ``DEFAULT_OUT``)."""


def add_audio_arguments(train: argparse.ArgumentParser, evaluate: argparse.ArgumentParser) -> None:
    from divcfg.config import arg_type
    train.set_defaults(out=DefaultOut(train.get_default("out") or "runs/small/embedder"))
    for p in (train, evaluate):
        p.add_argument("--modality", choices=["symbolic", "audio"], default="symbolic",
                       help="symbolic: the piano-roll E (default); audio: the paper's log-mel E over the corpus "
                            "rendered by the synthesiser, --out default runs/audio/embedder (eval: found from "
                            "the checkpoint's kind)")
        p.add_argument("--sample-rate", type=arg_type(int, ge=4000, le=48000), default=16000,
                       help="audio: E's sample rate (the corpus is rendered at it)")
        p.add_argument("--max-seconds", type=arg_type(float, gt=0), default=30.0,
                       help="audio: seconds of each rendered piece kept")
    g = train.add_argument_group("audio augmentations (--modality audio; the symbolic flags above are ignored)")
    g.add_argument("--max-tempo", type=arg_type(float, ge=1, le=2), default=1.2,
                   help="audio: tempo factor range [1/x, x] (1: off)")
    g.add_argument("--max-semitones", type=arg_type(float, ge=0, le=12), default=2.0,
                   help="audio: pitch shift range in ±semitones (0: off)")
    g.add_argument("--snr-db", type=arg_type(float, ge=-10, le=80), default=10.0,
                   help="audio: lowest signal-to-noise ratio of the added white noise, dB (drawn in [x, x+30])")
    g.add_argument("--p-noise", type=arg_type(float, ge=0, le=1), default=0.8,
                   help="audio: probability of adding noise to a view")


def run(args: argparse.Namespace) -> None:
    from divcfg.embedders.finish import JudgeRun
    from divcfg.provenance import seed_everything
    from divcfg.stages import clear_finished, judge_resume_state, run_per_seed
    if args.action == "train":
        if isinstance(args.out, DefaultOut) or not args.out:
            args.out = DEFAULT_OUT
        if run_per_seed(args, run):   # --seeds a,b,c: seed 0 in --out, seed s in <out>_s<s>
            return
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    data_dir = Path(args.data_dir)
    if args.action == "eval":
        from divcfg.models.base import check_device
        E = load_audio_embedder(args.checkpoint, device=str(check_device(args.device)))
        clips = render_split(data_dir, args.split, E.cfg.sample_rate, max_seconds=args.max_seconds)
        print_eval(evaluate_audio(E, clips, args.eval_pieces, args.seed))
        return
    preset = PRESETS[args.preset]
    cfg = preset_config(args.preset, args.sample_rate)
    augment = None if args.no_augment else AudioAugment(args.max_tempo, args.max_semitones,
                                                        (args.snr_db, args.snr_db + 30.0), args.p_noise)
    out = Path(args.out)
    steps = args.steps or preset["steps"]
    resume_from = judge_resume_state(out, args.resume, KIND, "embedder", asdict(cfg),
                                     "--preset and --sample-rate")
    clear_finished(out)
    t_load = time.time()
    max_train = args.max_train_pieces or preset["max_train_pieces"]
    train = render_split(data_dir, "train", cfg.sample_rate, max_train, args.seed, args.max_seconds)
    test = render_split(data_dir, "test", cfg.sample_rate, max_seconds=args.max_seconds)
    t_load = time.time() - t_load
    base_info = {"modality": "audio", "preset": args.preset, "augment": asdict(augment) if augment else None,
                 "tau": args.tau, "threads": args.threads, "device": args.device, "steps_planned": steps,
                 "max_train_pieces": max_train, "max_seconds": args.max_seconds, "train_cache": str(train.folder),
                 "test_cache": str(test.folder)}
    judge_run = JudgeRun(out, save_audio_embedder, "audio_embedder", data_dir, args.seed, base_info)
    E, hist = train_audio_embedder(train, cfg, augment=augment, steps=steps,
                                   minutes=args.minutes if args.minutes is not None else preset["minutes"],
                                   batch_size=args.batch_size or preset["batch_size"], lr=args.lr or preset["lr"],
                                   tau=args.tau, seed=args.seed, device=args.device, resume_from=resume_from,
                                   ckpt_every=args.ckpt_every, on_checkpoint=judge_run.on_checkpoint, out=str(out))
    res = evaluate_audio(E, test, args.eval_pieces, args.seed)
    judge_run.finish(E, hist, res, figures={"render_seconds": round(t_load, 1), "n_train_clips": hist["n_train_clips"]},
                     done_eval={"top1": res["retrieval"]["top1"]}, trained_on=f"on {hist['n_train_clips']} clips")
    print_eval(res)
    print(json.dumps({"top1": res["retrieval"]["top1"], "chance": res["retrieval"]["chance"]}))


def wants_audio(args: argparse.Namespace) -> bool:
    """Whether an `embedder train|eval` command line is for the audio E (flag, or checkpoint kind)."""
    from divcfg.embedders.audio import checkpoint_kind
    if getattr(args, "modality", "symbolic") == "audio":
        return True
    return args.action == "eval" and checkpoint_kind(args.checkpoint) == KIND

