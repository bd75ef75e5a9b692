"""Symbolic E against audio E on the same held-out generations of an evaluation run.

Every generation of ``<run>/samples.jsonl`` (all systems, the run's held-out prompts) is judged by

- the symbolic E (the run's ``--embedder``: the piano-roll ViT on the REMI tokens), and
- the audio E (``--audio-embedder``: the log-mel ViT) on the generation rendered by the synthesiser
  (``music.render``, 120 quarter notes per minute, at E's sample rate), and
- the untrained log-mel statistics stand-in (``domains.audio.LogMelStatsDiversity``) on the same
  audio, as a floor: what a judge that hears only spectral balance says.

Per system and prompt: ``d_p = mean over the G(G−1)/2 pairs of 1 − cos(E(y_i), E(y_j))`` (a pair with
an empty/undecodable member counts 0, as in ``divcfg evaluate``); per system the mean over prompts
with a percentile bootstrap interval over prompts (the same resampled prompts for every system and
judge), and each system's paired difference to the first system (the base) with its interval from
the same resamples. Each judge ranks the systems by that mean (1 = most diverse); agreement is
Kendall's τ_b and Spearman's ρ between the judges' system means (scipy), with a bootstrap interval
for τ from the same resamples, and Spearman's ρ over all (system, prompt) values.

Writes ``compare.json`` and ``compare.md`` into ``--out`` (default ``<run>/judge_compare``) and
prints the table. ``divcfg compare-judges RUN --audio-embedder PATH``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from divcfg.errors import UserError

JUDGES = ("symbolic", "audio", "logmel_stats")
LABELS = {"symbolic": "symbolic E", "audio": "audio E", "logmel_stats": "log-mel stats (untrained)"}


class RenderedAudioJudge:
    """A clip judge (``embed_with_mask`` on waveforms) applied to token sequences rendered to audio.
    Embeddings are cached by token sequence (systems that share a generation render it once);
    an undecodable or note-less generation is invalid (a zero row)."""

    def __init__(self, clip_embed, tokenizer, sample_rate: int, dim: int, name: str):
        self.clip_embed, self.tokenizer, self.sample_rate = clip_embed, tokenizer, sample_rate
        self.dim, self.name = dim, name
        self.cache: dict[tuple, torch.Tensor | None] = {}

    def embed_with_mask(self, completions: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
        from divcfg.music.judges.audio_data import render_tokens
        keys = [tuple(int(t) for t in c) for c in completions]
        todo = [k for k in dict.fromkeys(keys) if k not in self.cache]
        clips = {k: render_tokens(self.tokenizer, k, self.sample_rate) for k in todo}
        new = [k for k in todo if clips[k] is not None and np.abs(clips[k]).max() > 0]
        if new:
            for k, e in zip(new, self.clip_embed([clips[k] for k in new])):
                self.cache[k] = torch.as_tensor(e).float()
        for k in todo:
            self.cache.setdefault(k, None)
        valid = torch.tensor([self.cache[k] is not None for k in keys], dtype=torch.bool)
        emb = torch.stack([self.cache[k] if self.cache[k] is not None else torch.zeros(self.dim) for k in keys])
        return torch.nn.functional.normalize(emb, dim=-1), valid


def generations_by_system(results: dict, samples: list[dict], systems: list[str], n_prompts: int = 0
                          ) -> tuple[list[int], int, dict[str, list[list[int]]]]:
    """``(prompt indices, G, {system: token lists, prompt-major})`` for the first ``n_prompts`` (0 = all)."""
    prompts = [p["index"] for p in results["prompts"]]
    prompts = prompts[:n_prompts] if n_prompts else prompts
    G = int(results.get("generations") or 2)
    table = {(s["system"], s["prompt_index"], s["generation"]): s["tokens"] for s in samples}
    out = {}
    for name in systems:
        missing = [(p, g) for p in prompts for g in range(G) if (name, p, g) not in table]
        if missing:
            raise UserError(f"samples.jsonl lacks {len(missing)} generations of system '{name}': "
                            f"rerun `divcfg evaluate` for this run")
        out[name] = [table[(name, p, g)] for p in prompts for g in range(G)]
    return prompts, G, out


def bootstrap_means(per_prompt: dict[str, np.ndarray], n_boot: int, seed: int) -> dict[str, np.ndarray]:
    """Per system, the mean over prompts of each of ``n_boot`` resamples of the prompts (shared)."""
    k = len(next(iter(per_prompt.values())))
    idx = np.random.default_rng(seed).integers(0, k, size=(n_boot, k))
    return {s: v[idx].mean(1) for s, v in per_prompt.items()}


def ranks(means: dict[str, float]) -> dict[str, float]:
    """1 = most diverse (ties share the mean rank)."""
    from scipy.stats import rankdata
    names = list(means)
    r = rankdata([-means[n] for n in names])
    return {n: float(x) for n, x in zip(names, r)}


def compare(per_prompt: dict[str, dict[str, np.ndarray]], n_boot: int = 1000, seed: int = 0,
            confidence: float = 0.95) -> dict:
    """Per judge and system: mean, bootstrap interval, rank; per pair of judges: τ, ρ (see the module docstring)."""
    from scipy.stats import kendalltau, spearmanr
    lo_q, hi_q = 100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2
    out: dict = {"judges": {}, "agreement": {}}
    boots = {}
    for j, pp in per_prompt.items():
        boots[j] = bootstrap_means(pp, n_boot, seed)
        means = {s: float(v.mean()) for s, v in pp.items()}
        rk = ranks(means)
        ref = next(iter(pp))
        out["judges"][j] = {s: {"diversity": means[s], "ci_low": float(np.percentile(boots[j][s], lo_q)),
                                "ci_high": float(np.percentile(boots[j][s], hi_q)), "rank": rk[s],
                                "minus_ref": means[s] - means[ref],
                                "minus_ref_ci": [float(np.percentile(boots[j][s] - boots[j][ref], lo_q)),
                                                 float(np.percentile(boots[j][s] - boots[j][ref], hi_q))]}
                            for s in pp}
        out["reference_system"] = ref
    names = list(per_prompt)
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            ja, jb = names[a], names[b]
            systems = list(per_prompt[ja])
            x = [out["judges"][ja][s]["diversity"] for s in systems]
            y = [out["judges"][jb][s]["diversity"] for s in systems]
            taus = [kendalltau([boots[ja][s][i] for s in systems], [boots[jb][s][i] for s in systems]).statistic
                    for i in range(n_boot)]
            flat_a = np.concatenate([per_prompt[ja][s] for s in systems])
            flat_b = np.concatenate([per_prompt[jb][s] for s in systems])
            out["agreement"][f"{ja}~{jb}"] = {
                "kendall_tau": float(kendalltau(x, y).statistic), "spearman_rho": float(spearmanr(x, y).statistic),
                "kendall_tau_ci": [float(np.nanpercentile(taus, lo_q)), float(np.nanpercentile(taus, hi_q))],
                "spearman_rho_system_prompt": float(spearmanr(flat_a, flat_b).statistic),
                "n_systems": len(systems)}
    return out


def markdown(res: dict, labels: dict[str, str]) -> str:
    judges = list(res["judges"])
    head = "| system | " + " | ".join(f"{LABELS.get(j, j)}: diversity [95% CI] | rank" for j in judges) + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(judges))]
    for s in res["judges"][judges[0]]:
        cells = []
        for j in judges:
            r = res["judges"][j][s]
            cells += [f"{r['diversity']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]", f"{r['rank']:g}"]
        lines.append(f"| {labels.get(s, s)} | " + " | ".join(cells) + " |")
    ref = res.get("reference_system")
    if ref is not None:
        lines += ["", f"| system | " + " | ".join(f"{LABELS.get(j, j)}: − {labels.get(ref, ref)} [95% CI, paired]"
                                                 for j in judges) + " |", "|" + "---|" * (1 + len(judges))]
        for s in res["judges"][judges[0]]:
            if s == ref:
                continue
            cells = [f"{res['judges'][j][s]['minus_ref']:+.3f} [{res['judges'][j][s]['minus_ref_ci'][0]:+.3f}, "
                     f"{res['judges'][j][s]['minus_ref_ci'][1]:+.3f}]" for j in judges]
            lines.append(f"| {labels.get(s, s)} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("| judges | Kendall τ_b (systems) [95% CI] | Spearman ρ (systems) | "
                 "Spearman ρ (system × prompt) |")
    lines.append("|---|---|---|---|")
    for k, a in res["agreement"].items():
        ja, jb = k.split("~")
        lines.append(f"| {LABELS.get(ja, ja)} vs {LABELS.get(jb, jb)} | {a['kendall_tau']:.3f} "
                     f"[{a['kendall_tau_ci'][0]:.3f}, {a['kendall_tau_ci'][1]:.3f}] | {a['spearman_rho']:.3f} | "
                     f"{a['spearman_rho_system_prompt']:.3f} |")
    return "\n".join(lines) + "\n"


def run_compare(run_dir, audio_embedder: str, embedder: str = "", out: str = "", systems: list[str] | None = None,
                n_prompts: int = 0, n_boot: int = 1000, seed: int = 0, progress: bool = True) -> dict:
    """Judge every generation of an evaluation run with the three judges and compare them."""
    from tqdm import tqdm
    from divcfg.domains.audio import LogMelStatsDiversity
    from divcfg.domains.music_media import tokenizer_for
    from divcfg.embedders.audio import load_audio_embedder
    from divcfg.judges.pairs import group_mean_diversity
    from divcfg.listening.media import load_run
    from divcfg.music.judges.audio_data import soundfont_or_error
    from divcfg.music.judges.diversity import load_diversity_embedder
    from divcfg.provenance import provenance, write_json_atomic
    run_dir = Path(run_dir)
    results, samples = load_run(run_dir)
    embedder = embedder or (results.get("config") or {}).get("embedder") or ""
    if not embedder:
        raise UserError(f"'{run_dir}' names no symbolic embedder: pass --embedder PATH")
    known = [s["name"] for s in results["systems"]]
    systems = systems or known
    unknown = [s for s in systems if s not in known]
    if unknown:
        raise UserError(f"unknown system(s) {unknown} in --systems: choose among {', '.join(known)}")
    soundfont_or_error()
    E_audio = load_audio_embedder(audio_embedder)
    E_sym = load_diversity_embedder(embedder)
    tok = tokenizer_for(results)
    sr = E_audio.cfg.sample_rate
    stand_in = LogMelStatsDiversity(sr)
    judges = {"symbolic": E_sym,
              "audio": RenderedAudioJudge(E_audio.embed_waveforms, tok, sr, E_audio.cfg.out_dim, "audio E"),
              "logmel_stats": RenderedAudioJudge(lambda clips: [stand_in.embed_one(c) for c in clips], tok, sr,
                                                 2 * stand_in.n_mels, "log-mel stats")}
    prompts, G, gens = generations_by_system(results, samples, systems, n_prompts)
    per_prompt = {j: {} for j in judges}
    for name in tqdm(systems, desc="judging systems", unit="system", disable=not progress):
        for j, judge in judges.items():
            per_prompt[j][name] = group_mean_diversity(judge, gens[name], G).numpy().astype(float)
    res = compare(per_prompt, n_boot, seed)
    by_name = {s["name"]: s for s in results["systems"]}
    stored = [abs(float(np.mean(by_name[s]["per_prompt"]["diversity"][:len(prompts)]))
                  - res["judges"]["symbolic"][s]["diversity"])
              for s in systems if "diversity" in by_name[s].get("per_prompt", {})]
    labels = {s: by_name[s].get("label", s) for s in systems}
    res.update(run=str(run_dir), symbolic_embedder=str(embedder), audio_embedder=str(audio_embedder),
               n_prompts=len(prompts), generations=G, systems=systems, labels=labels, bootstrap=n_boot,
               symbolic_matches_results_max_abs=max(stored) if stored else None,
               per_prompt={j: {s: v.tolist() for s, v in pp.items()} for j, pp in per_prompt.items()},
               provenance=provenance(seed))
    out_dir = Path(out) if out else run_dir / "judge_compare"
    out_dir.mkdir(parents=True, exist_ok=True)
    md = markdown(res, labels)
    write_json_atomic(out_dir / "compare.json", res)
    (out_dir / "compare.md").write_text(md)
    res["markdown"], res["out"] = md, str(out_dir)
    return res


def add_arguments(p: argparse.ArgumentParser) -> None:
    from divcfg.config import arg_type
    p.add_argument("run_dir", help="an evaluation folder (results.json + samples.jsonl of a music run)")
    p.add_argument("--audio-embedder", required=True,
                   help="audio E checkpoint (`divcfg embedder train --modality audio`)")
    p.add_argument("--embedder", default="", help="symbolic E checkpoint (default: the one the run used)")
    p.add_argument("--out", default="", help="output folder (default: RUN/judge_compare)")
    p.add_argument("--systems", default="", help="comma-separated systems (default: all)")
    p.add_argument("--num-prompts", type=arg_type(int, ge=0), default=0, help="first N prompts (0: all)")
    p.add_argument("--bootstrap", type=arg_type(int, ge=10), default=1000, help="bootstrap resamples of the prompts")
    p.add_argument("--seed", type=arg_type(int, ge=0), default=0)
    p.add_argument("--threads", type=arg_type(int, ge=1), default=1, help="torch CPU threads")


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()] or None
    res = run_compare(args.run_dir, args.audio_embedder, args.embedder, args.out, systems, args.num_prompts,
                      args.bootstrap, args.seed)
    print(f"{res['n_prompts']} held-out prompts x {res['generations']} generations per system; "
          f"symbolic E {res['symbolic_embedder']}, audio E {res['audio_embedder']}")
    if res["symbolic_matches_results_max_abs"] is not None:
        print(f"symbolic E recomputed vs results.json: max |difference| {res['symbolic_matches_results_max_abs']:.2e}")
    print(res["markdown"], end="")
    print(f"wrote {res['out']}/compare.json and compare.md")


def main(argv: list[str] | None = None) -> int:
    from divcfg.cli import OneLineParser, one_line
    p = OneLineParser(prog="divcfg compare-judges", description=__doc__.splitlines()[0])
    add_arguments(p)
    try:
        run(p.parse_args(argv))
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
