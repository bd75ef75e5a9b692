"""`divcfg evaluate`'s configuration and its systems (each one generator + a decoding rule)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from divcfg.config import field
from divcfg.errors import UserError

FAMILY_ORDER = ("cfg", "temperature", "cfg_temperature", "finetuned", "merge")


@dataclass
class EvalConfig:
    base: str = field("runs/small/base", "base generator: a divcfg checkpoint, or hf:PATH (a local transformers folder)")
    quality: str = field("", "distilled student (β=0) checkpoint (hf:PATH for transformers); empty = not evaluated; "
                         "a,b,c: one per student seed, paired by position with --diversity (divcfg.evaluation.seeds)")
    diversity: str = field("", "diversity-rewarded student (β>0) checkpoint (hf:PATH for transformers; x,y,z: one per seed); "
                           "empty = not evaluated")
    merge_a: str = field("", "merge endpoint A (λ=0); empty = --quality")
    merge_b: str = field("", "merge endpoint B (λ=1); empty = --diversity")
    lams: str = field("0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1", "comma-separated merge weights λ", float_list=True, ge=0, le=1)
    cfg_gammas: str = field("1.5,2,3,4,5", "comma-separated CFG scales γ for the base model (γ=1 is base)", float_list=True, ge=0, le=100)
    temperatures: str = field("0.8,0.9,1.1,1.25,1.5", "comma-separated temperatures τ for the base model (τ=1 is base)", float_list=True, ge=0.01, le=100)
    cfg_temperatures: str = field("", "comma-separated temperatures τ at which every CFG γ of --cfg-gammas is also "
                                  "sampled, softmax(((1-γ)·l(∅) + γ·l(x))/τ): the family cfg_temperature, off the "
                                  "CFG front (empty = none; its points also move the shared hypervolume reference)",
                                  float_list=True, ge=0.01, le=100)
    prompts: str = field("", "text domain: prompt file (.txt one per line, .jsonl with a 'prompt' field); "
                         "empty = the music testbed of --data-dir")
    null_prompt: str = field("", "text domain: the null prompt ∅ of CFG (empty = the one stored with a "
                             "divcfg-fine-tuned folder, else the empty prompt)")
    diversity_judge: str = field("", "diversity judge module:function, embedder form f(completions) -> "
                                 "embeddings (empty = the domain's: --embedder for music, MiniLM for text)")
    quality_judge: str = field("", "quality judge module:function, TRL reward form f(prompts, completions, **kw) "
                               "-> list[float] (empty = --scorer for music, prompt-completion similarity for text)")
    embedder: str = field("runs/small/embedder", "music: diversity embedder E checkpoint")
    scorer: str = field("runs/small/scorer", "music: alignment scorer checkpoint")
    data_dir: str = field("data/small", "music: data set folder written by `divcfg data` (prompts, reference)")
    split: str = field("test", "split the prompts come from (held out: test)", choices=("train", "val", "test"))
    num_prompts: int = field(48, "K: number of held-out prompts", ge=1)
    generations: int = field(4, "G: generations per prompt (≥ 2, diversity is measured within a prompt)", ge=2)
    max_new_tokens: int = field(0, "generation length limit in tokens (0 = the model's max_len - 1)", ge=0)
    batch_size: int = field(64, "rows per sampling batch (the same for every system, for tokens/s)", ge=1)
    seed: int = field(0, "seed of the prompt subset, the sampling generator and the bootstrap", ge=0)
    bootstrap: int = field(1000, "bootstrap resamples over prompts for the confidence intervals", ge=1)
    confidence: float = field(0.95, "confidence level of the intervals", gt=0, lt=1)
    reference_pieces: int = field(256, "held-out pieces for the corpus reference of the musical metrics", ge=1)
    bf16: bool = field(False, "bf16 autocast while sampling, where the device supports it (off: fp32 sampled "
                              "1.3-1.9x more tokens per CPU-second here)")
    device: str = field("cpu", "torch device for the generators (cpu, cuda, cuda:1, mps)")
    judge_device: str = field("", "device of the text judges (empty = --device); music checkpoints' judges run on the CPU")
    threads: int = field(1, "torch CPU threads (0 = torch's default). 1 by default: on a shared 2-core machine "
                            "2 threads sampled up to 17x slower than 1 (OpenMP contention)", ge=0)
    out: str = field("runs/small/eval", "run folder for results.json, results.csv, samples.jsonl")
    preset: str = field("small", "preset this config came from (informational)")


PRESETS: dict[str, dict] = {
    "tiny": dict(data_dir="data/tiny", base="runs/tiny/base", embedder="runs/tiny/embedder",
                 scorer="runs/tiny/scorer", out="runs/tiny/eval", num_prompts=3, generations=2, max_new_tokens=48,
                 batch_size=6, cfg_gammas="2", temperatures="1.3", lams="0,0.5,1", bootstrap=200,
                 reference_pieces=16, preset="tiny"),
    # demo: 12 sampling runs (8 at one pass/token, 4 with CFG) of 48 rows up to 512 tokens (the data's
    # longest tune), so truncation does not hide natural endings
    "demo": dict(data_dir="data/small", base="runs/demo/base", embedder="runs/demo/embedder",
                 scorer="runs/demo/scorer", out="runs/demo/eval", num_prompts=12, generations=4, batch_size=48,
                 max_new_tokens=512, cfg_gammas="1.5,2,3,4", temperatures="0.85,1.2",
                 lams="0,0.25,0.5,0.75,1", reference_pieces=128, preset="demo"),
    "small": dict(),
    "full": dict(data_dir="data/full", base="runs/full/base", embedder="runs/full/embedder",
                 scorer="runs/full/scorer", out="runs/full/eval", num_prompts=200, generations=4, batch_size=96,
                 reference_pieces=1000, preset="full"),
}


@dataclass
class System:
    """One generator + decoding rule to evaluate."""
    name: str             # identifier (file-safe)
    label: str            # for tables and plots
    family: str           # base | cfg | temperature | finetuned | merge
    checkpoint: str       # weights (merges: A's folder); hf:PATH for transformers folders
    gamma: float = 1.0
    temperature: float = 1.0
    lam: float | None = None
    checkpoint_b: str | None = None

    def signature(self) -> tuple:
        """Systems with equal signatures sample identically (same weights and decoding rule)."""
        if self.lam is None:
            weights = self.checkpoint
        elif self.lam == 0.0:
            weights = self.checkpoint
        elif self.lam == 1.0:
            weights = self.checkpoint_b
        else:
            weights = (self.checkpoint, self.checkpoint_b, self.lam)
        return weights, self.gamma, self.temperature


def parse_floats(text: str, name: str) -> list[float]:
    from divcfg.config import parse_float_list
    return parse_float_list(text, name)  # finite numbers; the ranges are checked by build_systems


def _ckpt(spec: str) -> str:
    """The resolved folder of a spec (``hf:`` kept)."""
    from divcfg.models.base import HF_PREFIX, is_hf_spec, spec_path
    if is_hf_spec(spec):
        from divcfg.models.hf_plugin import resolve_hf_dir
        return HF_PREFIX + str(resolve_hf_dir(spec_path(spec)).resolve())
    from divcfg.checkpoint import resolve_checkpoint_dir
    return str(resolve_checkpoint_dir(spec).resolve())


def _beta(spec: str) -> float | None:
    from divcfg.models.base import is_hf_spec, spec_path
    name = "divcfg.json" if is_hf_spec(spec) else "config.json"
    try:
        config = json.loads((spec_path(spec) / name).read_text())
        beta = (config.get("finetune") or {}).get("beta")
        return None if beta is None else float(beta)
    except (OSError, json.JSONDecodeError, TypeError, ValueError):
        return None


def _fmt(x: float) -> str:
    return f"{x:g}"


def build_systems(cfg: EvalConfig) -> list[System]:
    """The systems of ``cfg`` in evaluation order (base-model systems first, merges last)."""
    if not cfg.base:
        raise UserError("--base is required: the pre-trained generator checkpoint (e.g. runs/small/base)")
    gammas = parse_floats(cfg.cfg_gammas, "cfg_gammas")
    temps = parse_floats(cfg.temperatures, "temperatures")
    cfg_temps = parse_floats(cfg.cfg_temperatures, "cfg_temperatures")
    lams = parse_floats(cfg.lams, "lams")
    if any(g < 0 for g in gammas):
        raise UserError(f"--cfg-gammas must be ≥ 0 (1 = no guidance), got {cfg.cfg_gammas}")
    if any(t <= 0 for t in temps + cfg_temps):
        raise UserError(f"--temperatures and --cfg-temperatures must be > 0, got {cfg.temperatures!r} and "
                        f"{cfg.cfg_temperatures!r}")
    if any(not 0 <= x <= 1 for x in lams):
        raise UserError(f"--lams must lie in [0, 1], got {cfg.lams}")
    base = _ckpt(cfg.base)
    systems = [System("base", "base (γ=1)", "base", base)]
    systems += [System(f"cfg_g{_fmt(g)}", f"CFG γ={_fmt(g)}", "cfg", base, gamma=g) for g in gammas if g != 1.0]
    systems += [System(f"temp_t{_fmt(t)}", f"τ={_fmt(t)}", "temperature", base, temperature=t)
                for t in temps if t != 1.0]
    systems += [System(f"cfg_g{_fmt(g)}_t{_fmt(t)}", f"CFG γ={_fmt(g)} τ={_fmt(t)}", "cfg_temperature", base,
                       gamma=g, temperature=t) for g in gammas if g != 1.0 for t in cfg_temps if t != 1.0]
    for path, name, what, default_beta in ((cfg.quality, "distilled", "distilled", 0),
                                           (cfg.diversity, "diversity", "diversity", 15)):
        if path:
            ck = _ckpt(path)
            beta = _beta(ck)
            systems.append(System(name, f"{what} β={_fmt(beta if beta is not None else default_beta)}",
                                  "finetuned", ck))
    a, b = cfg.merge_a or cfg.quality, cfg.merge_b or cfg.diversity
    if lams and (cfg.merge_a or cfg.merge_b or (a and b)):
        if not (a and b):
            raise UserError("a merge sweep needs both endpoints: pass --merge-a and --merge-b "
                            "(or --quality and --diversity)")
        a, b = _ckpt(a), _ckpt(b)
        systems += [System(f"merge_l{_fmt(x)}", f"merge λ={_fmt(x)}", "merge", a, lam=x, checkpoint_b=b)
                    for x in lams]
    return systems


def families(systems: list[System]) -> dict[str, list[str]]:
    """Family name -> system names; the base system starts both the γ and the τ curves."""
    out: dict[str, list[str]] = {}
    base = [s.name for s in systems if s.family == "base"]
    for fam in FAMILY_ORDER:
        members = [s.name for s in systems if s.family == fam]
        if members:
            out[fam] = (base if fam in ("cfg", "temperature") else []) + members
    return out


def training_logs(cfg: EvalConfig) -> dict[str, str]:
    """Fine-tuning logs (``<run>/metrics.jsonl`` beside ``<run>/checkpoint``) of the students."""
    from divcfg.models.base import spec_path
    logs = {}
    for name, path in (("distilled", cfg.quality), ("diversity", cfg.diversity)):
        if not path:
            continue
        d = Path(_ckpt(path).removeprefix("hf:"))
        for cand in (d / "metrics.jsonl", d.parent / "metrics.jsonl", spec_path(path) / "metrics.jsonl"):
            if cand.exists():
                logs[name] = str(cand)
                break
    return logs
