"""The music domain's figures for ``divcfg evaluate`` (moved from ``divcfg.evaluation``).

Per system, with ``q_kg`` the alignment score of generation g of prompt k (−1 for an empty or
undecodable generation) and ``d_k`` the mean of ``1 − cos(E(y_kg), E(y_kh))`` over the G(G−1)/2 pairs
of prompt k (0 for a pair with an empty member): quality and diversity; the independent diversity
figures (pitch-class and onset-histogram distances, melodic-interval n-gram distance, distinct token
n-gram ratio; ``divcfg.music.metrics``) averaged over the same pairs; ``valid`` (decodes, has notes,
stays in the prompt's meter); the MusPy-style metrics, and ``musical_distance =
mean_m |mean(m) − ref_mean(m)| / ref_std(m)`` against the held-out corpus reference.
"""

from __future__ import annotations

import math
import re
import warnings

import numpy as np

INDEPENDENT_FIGURES = ("pitch_class_distance", "onset_distance", "interval_ngram_distance",
                       "distinct_ngram_ratio")


def _nanmean(x) -> float:
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else math.nan


def meter_of(meta: dict) -> str | None:
    """The prompt's meter as 'n/d', or None when unknown (metrics then use the score's own)."""
    m = str(meta.get("meter") or "")
    return m if re.fullmatch(r"\d+/\d+", m) else None


def check_vocabularies(domain, judges, generator) -> None:
    from divcfg.errors import UserError
    tok = domain.tokenizer(generator)
    E = judges.diversity
    if getattr(E, "tokenizer", None) is not None and len(E.tokenizer) != len(tok):
        raise UserError(f"the diversity embedder's vocabulary ({len(E.tokenizer)} tokens) is not the "
                        f"generator's ({len(tok)}): train the judges on the same data set")


def judge_music(domain, prompts, seqs: list, G: int, judges, generator=None) -> dict:
    """All per-system figures from the sampled rows (row r = prompt r // G, generation r % G)."""
    from divcfg.judges.pairs import group_mean_diversity
    from divcfg.music.attributes import attribute_accuracy
    from divcfg.music.metrics import SCORE_METRICS, pair_diversity_figures, score_metrics, token_validity
    from divcfg.music.tokenizer import tokens_to_score

    tok = domain.tokenizer(generator)
    K = len(prompts)
    texts = [prompts.texts[r // G] for r in range(len(seqs))]
    with warnings.catch_warnings():  # empty generations are counted in empty_rate instead
        warnings.simplefilter("ignore")
        q = judges.quality.score(texts, seqs).float().cpu().numpy()
    d_prompt = group_mean_diversity(judges.diversity, seqs, G)
    scores = [tokens_to_score(tok, s) for s in seqs]
    meters = [meter_of(prompts.meta[r // G]) for r in range(len(seqs))]
    n_notes = [0 if sc is None else sum(len(t.notes) for t in sc.tracks) for sc in scores]
    valid = [token_validity(tok, s, m)["valid"] for s, m in zip(seqs, meters)]
    music = [score_metrics(sc, m) for sc, m in zip(scores, meters)]
    figures = {f: [] for f in INDEPENDENT_FIGURES}
    for k in range(K):
        pairs = [pair_diversity_figures(scores[k * G + i], scores[k * G + j], seqs[k * G + i],
                                        seqs[k * G + j], meters[k * G])
                 for i in range(G) for j in range(i + 1, G)]
        for f in INDEPENDENT_FIGURES:
            figures[f].append(_nanmean([p[f] for p in pairs]))
    q_prompt = q.reshape(K, G).mean(1)
    return {"per_generation": {"quality": q.tolist(), "n_notes": n_notes, "valid": valid,
                               "empty": [n == 0 for n in n_notes]},
            "per_prompt": {"quality": q_prompt.tolist(), "diversity": d_prompt.tolist(), **figures},
            "summary": {"music": {m: _nanmean([x[m] for x in music]) for m in SCORE_METRICS},
                        "attributes": attribute_accuracy(tok, seqs, texts, [prompts.meta[r // G] for r in range(len(seqs))])}}


def summary_extras(judged: dict, reference: dict) -> dict:
    """``music`` (metric means) and ``musical_distance`` of one system."""
    from divcfg.music.metrics import SCORE_METRICS
    music = judged["summary"]["music"]
    metrics = reference.get("metrics", {})
    z = [abs(music[m] - metrics[m]["mean"]) / metrics[m]["std"] for m in SCORE_METRICS
         if metrics.get(m, {}).get("std") and math.isfinite(music[m])]
    return {"music": music, "musical_distance": _nanmean(z) if z else math.nan,
            **judged["summary"].get("attributes", {})}  # attribute accuracy vs the captions (music.attributes)


def corpus_figures(data_dir, split: str, prompts, judges, max_pieces: int, seed: int) -> dict:
    """Reference figures of real held-out music: the musical metrics over ``max_pieces`` pieces; the
    alignment score of each prompt's own piece (a ceiling for quality); and the diversity of real
    pieces of *different* prompts (k, k+1), a scale for the diversity axis."""
    from divcfg.music.judges.diversity import diversity
    from divcfg.music.dataset import load_split
    from divcfg.music.metrics import corpus_reference

    reference = corpus_reference(data_dir, split, max_pieces=max_pieces, seed=seed)
    pieces = {p["id"]: p["tokens"] for p in load_split(data_dir, split)}
    real = [pieces[i] for i in prompts.ids]
    q = judges.quality.score(list(prompts.texts), real).float()
    out = {"metrics": reference, "alignment_real": float(q.mean()), "diversity_between_pieces": math.nan}
    if len(real) >= 2:
        out["diversity_between_pieces"] = float(diversity(judges.diversity, real, real[1:] + real[:1]).mean())
    return out
