"""Musical metrics computed from the notes, following MusPy's definitions (Dong et al., 2020), plus
token-sequence validity, corpus reference values, and cheap diversity figures between two pieces.

All score metrics take a ``symusic.Score`` (drum tracks ignored, tracks merged) and return
``nan`` where MusPy does (no notes / too short). With ``h`` the pitch-class histogram (note counts)
and ``R`` the bar length in ticks (from ``meter`` or the score's first time signature, 4/4 if none):

- ``pitch_class_entropy = -Σ_c p_c log2 p_c``,  ``p = h / Σh``  (0 … log2 12 ≈ 3.585 bits);
- ``scale_consistency = max_{root, mode} #(notes in scale) / #notes`` over the 12 major and 12
  natural-minor scales;
- ``groove_consistency = 1 - Σ_{i<M} d_H(G_i, G_{i+1}) / (R·(M-1))``, ``G_i ∈ {0,1}^R`` the onset
  pattern of bar i, ``M = ceil(end / R)`` bars (nan if M < 2);
- ``empty_bar_rate = #(bars in which no note sounds) / M`` (MusPy's ``empty_measure_rate``; a note
  sounds in bar i when it overlaps ``[iR, (i+1)R)`` for a positive time);
- ``polyphony = Σ_pitch |time pitch is on| / |time any pitch is on|``, the mean number of pitches
  sounding while anything sounds (MusPy ≥ 0.4's ``polyphony``), computed exactly on the intervals.

Diversity figures between two pieces (independent of the learned embedder):

- ``pitch_class_distance = ½ ‖p¹ - p²‖₁`` (total variation between pitch-class distributions, 0 … 1);
- ``onset_distance``: the same on the histograms of onset positions within the bar (R bins);
- ``interval_ngram_distance = 1 - |A∩B| / |A∪B|`` (Jaccard) over the sets of n-grams of melodic
  intervals of the top line (transposition-invariant melody);
- ``distinct_ngram_ratio(a, b) = |set(ng(a)) ∪ set(ng(b))| / (|ng(a)| + |ng(b)|)`` over token-id
  n-grams (1 = nothing repeated within or across; identical sequences give at most ½).
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

MAJOR = np.array([1, 0, 1, 0, 1, 1, 0, 1, 0, 1, 0, 1], bool)
NATURAL_MINOR = np.array([1, 0, 1, 1, 0, 1, 0, 1, 1, 0, 1, 0], bool)
SCORE_METRICS = ("pitch_class_entropy", "scale_consistency", "groove_consistency", "empty_bar_rate",
                 "polyphony")


# ---------------------------------------------------------------------------------------------
# notes in ticks


def _notes_ticks(score) -> np.ndarray:
    """``int64[n, 3]`` (onset, end, pitch) in ticks of all non-drum notes."""
    parts = []
    for track in score.tracks:
        if track.is_drum or track.note_num() == 0:
            continue
        a = track.notes.numpy()
        t = a["time"].astype(np.int64)
        parts.append(np.stack([t, t + a["duration"].astype(np.int64), a["pitch"].astype(np.int64)], 1))
    return np.concatenate(parts) if parts else np.zeros((0, 3), np.int64)


def parse_meter(meter: str | None) -> tuple[int, int] | None:
    """'6/8' -> (6, 8); None for a missing or free meter ('none')."""
    try:
        num, den = str(meter).strip().split("/")
        return int(num), int(den)
    except (ValueError, AttributeError):
        return None


def bar_ticks(score, meter: str | None = None) -> int:
    """Bar length in ticks: ``tpq · 4 · num / den`` for ``meter`` (e.g. '6/8'), else (no or free
    meter) the score's first time signature, else 4/4."""
    if parse_meter(meter) is not None:
        num, den = parse_meter(meter)
    elif len(score.time_signatures):
        ts = score.time_signatures[0]
        num, den = ts.numerator, ts.denominator
    else:
        num, den = 4, 4
    return max(1, int(round(score.ticks_per_quarter * 4 * num / den)))


def n_notes(score) -> int:
    return 0 if score is None else len(_notes_ticks(score))


# ---------------------------------------------------------------------------------------------
# MusPy metrics


def pitch_class_histogram(score) -> np.ndarray:
    """Note counts per pitch class, ``float64[12]``."""
    notes = _notes_ticks(score)
    return np.bincount(notes[:, 2] % 12, minlength=12).astype(np.float64)


def pitch_class_entropy(score) -> float:
    h = pitch_class_histogram(score)
    if h.sum() < 1:
        return math.nan
    p = h[h > 0] / h.sum()
    return float(-(p * np.log2(p)).sum())


def scale_consistency(score) -> float:
    h = pitch_class_histogram(score)
    if h.sum() < 1:
        return math.nan
    best = 0.0
    for mask in (MAJOR, NATURAL_MINOR):
        for root in range(12):
            best = max(best, float(h[np.roll(mask, root)].sum() / h.sum()))
    return best


def _n_bars(notes: np.ndarray, bar: int) -> int:
    end = int(notes[:, 1].max()) if len(notes) else 0
    return -(-end // bar)


def groove_consistency(score, meter: str | None = None) -> float:
    notes = _notes_ticks(score)
    bar = bar_ticks(score, meter)
    m = _n_bars(notes, bar)
    if m < 2:
        return math.nan
    patterns = np.zeros((m, bar), bool)
    measure, position = np.divmod(notes[:, 0], bar)
    patterns[measure, position] = True
    hamming = np.count_nonzero(patterns[:-1] != patterns[1:])
    return float(1 - hamming / (bar * (m - 1)))


def empty_bar_rate(score, meter: str | None = None) -> float:
    notes = _notes_ticks(score)
    bar = bar_ticks(score, meter)
    m = _n_bars(notes, bar)
    if m < 1:
        return math.nan
    sounding = np.zeros(m, bool)
    for on, off, _ in notes:
        if off > on:
            sounding[on // bar:(off - 1) // bar + 1] = True
    return float(1 - sounding.sum() / m)


def _union_length(intervals: np.ndarray) -> int:
    """Total length of the union of half-open ``[on, off)`` intervals."""
    if len(intervals) == 0:
        return 0
    iv = intervals[np.argsort(intervals[:, 0])]
    total, cur_on, cur_off = 0, int(iv[0, 0]), int(iv[0, 1])
    for on, off in iv[1:]:
        if on > cur_off:
            total += cur_off - cur_on
            cur_on, cur_off = int(on), int(off)
        else:
            cur_off = max(cur_off, int(off))
    return total + cur_off - cur_on


def polyphony(score) -> float:
    notes = _notes_ticks(score)
    notes = notes[notes[:, 1] > notes[:, 0]]
    active = _union_length(notes[:, :2])
    if active < 1:
        return math.nan
    per_pitch = sum(_union_length(notes[notes[:, 2] == p, :2]) for p in np.unique(notes[:, 2]))
    return float(per_pitch / active)


def score_metrics(score, meter: str | None = None) -> dict[str, float]:
    """All five MusPy-style metrics of one score (``nan`` where undefined)."""
    if score is None:
        return {k: math.nan for k in SCORE_METRICS}
    return {"pitch_class_entropy": pitch_class_entropy(score),
            "scale_consistency": scale_consistency(score),
            "groove_consistency": groove_consistency(score, meter),
            "empty_bar_rate": empty_bar_rate(score, meter),
            "polyphony": polyphony(score)}


# ---------------------------------------------------------------------------------------------
# token-sequence validity


def token_validity(tok, ids: Sequence[int], meter: str | None = None) -> dict[str, bool]:
    """Is a generated REMI sequence usable music?

    - ``decodes``: ``tokens_to_score`` returns a score;
    - ``has_notes``: that score has at least one note;
    - ``meter_ok``: every ``TimeSig_a/b`` token equals ``meter`` (as the vocabulary writes it,
      e.g. 2/2 -> 4/4; see ``supported_time_signature``) and every ``Position_k`` lies inside
      the bar, ``k < num · res`` (miditok REMI counts ``res`` = the finest beat resolution positions
      per 1/den beat); with no or a free meter ('none') only the presence of a Bar token is checked;
    - ``valid``: all three.
    """
    from divcfg.music.tokenizer import tokens_to_score
    score = tokens_to_score(tok, list(ids))
    decodes = score is not None
    has_notes = decodes and n_notes(score) > 0
    meter_ok = bars_consistent(tok, ids, meter)
    return {"decodes": decodes, "has_notes": has_notes, "meter_ok": meter_ok,
            "valid": decodes and has_notes and meter_ok}


def bars_consistent(tok, ids: Sequence[int], meter: str | None) -> bool:
    """``token_validity``'s ``meter_ok`` from the token strings alone (no decoding)."""
    res = max(tok.config.beat_res.values())
    limit = None
    if parse_meter(meter) is None:
        meter = None
    else:
        from divcfg.music.tokenizer import supported_time_signature
        num, den = parse_meter(meter)
        num, den = supported_time_signature(num, den) or (num, den)
        limit = num * res
        meter_token = f"TimeSig_{num}/{den}"
    n_bars = 0
    vocab_size = len(tok)
    for i in ids:
        if not 0 <= int(i) < vocab_size:
            return False
        s = tok[int(i)]
        if s.startswith("Bar"):
            n_bars += 1
        elif meter is not None and s.startswith("TimeSig_") and s != meter_token:
            return False
        elif limit is not None and s.startswith("Position_") and int(s.split("_")[1]) >= limit:
            return False
    return n_bars > 0


# ---------------------------------------------------------------------------------------------
# corpus reference values


def summarize(rows: Iterable[dict[str, float]]) -> dict[str, dict[str, float]]:
    """``{metric: {"mean", "std", "n"}}`` over the finite values of each metric."""
    rows = list(rows)
    out = {}
    for k in (rows[0].keys() if rows else SCORE_METRICS):
        v = np.array([r[k] for r in rows], np.float64)
        v = v[np.isfinite(v)]
        out[k] = {"mean": float(v.mean()) if len(v) else math.nan,
                  "std": float(v.std()) if len(v) else math.nan, "n": int(len(v))}
    return out


def corpus_reference(data_dir, split: str = "val", max_pieces: int | None = None,
                     seed: int = 0) -> dict[str, dict[str, float]]:
    """Reference values of the score metrics over real pieces of a split (the meter from each
    piece's ``meta``), for comparison with generations: ``{metric: {mean, std, n}}``."""
    from divcfg.music.dataset import load_split
    from divcfg.music.tokenizer import load_tokenizer, tokens_to_score
    tok = load_tokenizer(data_dir)
    pieces = load_split(data_dir, split)
    if max_pieces is not None and len(pieces) > max_pieces:
        idx = np.random.default_rng(seed).choice(len(pieces), max_pieces, replace=False)
        pieces = [pieces[i] for i in sorted(idx)]
    rows = [score_metrics(tokens_to_score(tok, p["tokens"]), p.get("meta", {}).get("meter")) for p in pieces]
    return summarize(rows)


# ---------------------------------------------------------------------------------------------
# independent diversity figures between two pieces


def _tv(a: np.ndarray, b: np.ndarray) -> float:
    if a.sum() < 1 or b.sum() < 1:
        return math.nan
    return float(0.5 * np.abs(a / a.sum() - b / b.sum()).sum())


def pitch_class_distance(score_a, score_b) -> float:
    """Total-variation distance between the two pitch-class distributions (nan if one is empty)."""
    return _tv(pitch_class_histogram(score_a), pitch_class_histogram(score_b))


def onset_histogram(score, meter: str | None = None, bins: int = 48) -> np.ndarray:
    """Note onsets counted by position within the bar, quantised to ``bins`` bins per bar."""
    notes = _notes_ticks(score)
    bar = bar_ticks(score, meter)
    pos = ((notes[:, 0] % bar) * bins) // bar
    return np.bincount(pos, minlength=bins).astype(np.float64)


def onset_distance(score_a, score_b, meter: str | None = None) -> float:
    return _tv(onset_histogram(score_a, meter), onset_histogram(score_b, meter))


def melody_intervals(score) -> list[int]:
    """Successive pitch intervals of the top line (the highest pitch at each distinct onset)."""
    notes = _notes_ticks(score)
    if len(notes) < 2:
        return []
    order = np.lexsort((-notes[:, 2], notes[:, 0]))
    notes = notes[order]
    first = np.concatenate([[True], notes[1:, 0] != notes[:-1, 0]])
    top = notes[first, 2]
    return np.diff(top).tolist()


def _ngrams(seq: Sequence, n: int) -> list[tuple]:
    return [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]


def interval_ngram_distance(score_a, score_b, n: int = 3) -> float:
    a, b = set(_ngrams(melody_intervals(score_a), n)), set(_ngrams(melody_intervals(score_b), n))
    if not a and not b:
        return math.nan
    return float(1 - len(a & b) / len(a | b))


def distinct_ngram_ratio(ids_a: Sequence[int], ids_b: Sequence[int], n: int = 4) -> float:
    ga, gb = _ngrams(list(ids_a), n), _ngrams(list(ids_b), n)
    if not ga and not gb:
        return math.nan
    return float(len(set(ga) | set(gb)) / (len(ga) + len(gb)))


def pair_diversity_figures(score_a, score_b, ids_a, ids_b, meter: str | None = None) -> dict[str, float]:
    """All independent diversity figures of one pair of generations (score figures are nan when
    either score is None)."""
    both = score_a is not None and score_b is not None
    return {"pitch_class_distance": pitch_class_distance(score_a, score_b) if both else math.nan,
            "onset_distance": onset_distance(score_a, score_b, meter) if both else math.nan,
            "interval_ngram_distance": interval_ngram_distance(score_a, score_b) if both else math.nan,
            "distinct_ngram_ratio": distinct_ngram_ratio(ids_a, ids_b)}
