"""Attribute accuracy: does a generation have what its caption asks for?

Only attributes the prompt's *text* names are scored (a caption variant that leaves out the key asks
for no key), each over the generations whose caption names it; an empty or undecodable generation is
a miss. NaN when no caption of the system's prompts names the attribute.

- ``attr_key_exact``: the Krumhansl-Schmuckler estimate of the generation's key
  (``captions.estimate_key``) has the requested tonic pitch class and mode;
- ``attr_key_relative``: relaxed by the convention for keys, the relative major/minor: the estimate
  and the request share their diatonic collection (same ionian tonic ``tonic − MODE_OFFSET[mode]``;
  modal requests such as "D dorian" count through their collection too, while only an identical
  tonic and mode counts as exact);
- ``attr_meter``: the generation decodes, has notes and every bar keeps the requested time signature
  (``metrics.token_validity``'s ``valid``);
- ``attr_bars_exact``: the number of ``Bar`` tokens equals the "N bars" the caption names;
  ``attr_length_word``: relaxed, the generation's bar count falls in the length word of the requested
  count (``captions.length_word``: short ≤ 16, medium-length 17–40, long > 40), scored where the caption
  names either a bar count or a length word.

- ``attr_register``, ``attr_range``, ``attr_motion``, ``attr_steps``: a *rich* caption's descriptors
  (`divcfg.music.descriptors`): the generation's statistic lies in the band the caption names
  ("in a high register": median pitch ≥ 73). These columns appear only where some caption names one.

Not scored: tempo words (the tokens carry no tempo) and the number of voices (one track per piece).
"""

from __future__ import annotations

import math
import re
from typing import Sequence

DESCRIPTOR_COLUMNS = ("attr_register", "attr_range", "attr_motion", "attr_steps")
ATTRIBUTE_COLUMNS = ("attr_key_exact", "attr_key_relative", "attr_meter", "attr_bars_exact", "attr_length_word",
                     *DESCRIPTOR_COLUMNS)
LENGTH_WORDS = ("short", "medium-length", "long")


def parse_key(key: str | None) -> tuple[int, str] | None:
    """``"F# minor"`` / ``"E- major"`` / ``"D dorian"`` -> ``(tonic pitch class, mode)``; None if unparsable."""
    from divcfg.music.captions import FLAT_NAMES, MODE_OFFSET, SHARP_NAMES
    parts = (key or "").split()
    if len(parts) != 2 or parts[1] not in MODE_OFFSET:
        return None
    name = parts[0].replace("-", "b")
    for names in (SHARP_NAMES, FLAT_NAMES):
        if name in names:
            return names.index(name), parts[1]
    return None


def same_collection(a: tuple[int, str], b: tuple[int, str]) -> bool:
    """Relative keys: the same diatonic collection (e.g. C major, A minor, D dorian)."""
    from divcfg.music.captions import MODE_OFFSET
    return (a[0] - MODE_OFFSET[a[1]]) % 12 == (b[0] - MODE_OFFSET[b[1]]) % 12


def asked(text: str, meta: dict) -> dict:
    """The attributes the caption ``text`` names, with their requested values."""
    out = {}
    key, meter = meta.get("key"), meta.get("meter")
    if key and parse_key(key) and key in text:
        out["key"] = parse_key(key)
    if meter and re.fullmatch(r"\d+/\d+", str(meter)) and str(meter) in text:
        out["meter"] = str(meter)
    m = re.search(r"\b(\d+) bars\b", text)
    if m:
        out["bars"] = int(m.group(1))
    words = [w for w in LENGTH_WORDS if re.search(rf"\b{re.escape(w)}\b", text)]
    if words:
        out["length_word"] = words[-1]
    elif "bars" in out:
        from divcfg.music.captions import length_word
        out["length_word"] = length_word(out["bars"])
    from divcfg.music import descriptors
    out.update({f"descriptor_{k}": v for k, v in descriptors.asked(text).items()})
    return out


def attribute_accuracy(tokenizer, seqs: Sequence[Sequence[int]], texts: Sequence[str],
                       metas: Sequence[dict]) -> dict[str, float]:
    """The ``ATTRIBUTE_COLUMNS`` rates of generations ``seqs`` (row r asked for by ``texts[r]``, ``metas[r]``)."""
    from divcfg.music.captions import estimate_key, length_word
    from divcfg.music.descriptors import band, values
    from divcfg.music.metrics import token_validity
    from divcfg.music.pianoroll import score_notes
    from divcfg.music.tokenizer import tokens_to_score

    bar_id = tokenizer["Bar_None"] if "Bar_None" in tokenizer.vocab else None
    hits = {c: [] for c in ATTRIBUTE_COLUMNS}
    for ids, text, meta in zip(seqs, texts, metas):
        want = asked(text, meta)
        if not want:
            continue
        n_bars = sum(1 for t in ids if t == bar_id)
        named = [k for k in want if k.startswith("descriptor_")]
        if "key" in want or named:
            score = tokens_to_score(tokenizer, list(ids))
            notes = score_notes(score) if score is not None else []
        if named:
            stats = values(notes) if len(notes) else None
            for k in named:
                name = k.removeprefix("descriptor_")
                hits[f"attr_{name}"].append(stats is not None and band(name, stats[name]) == want[k])
        if "key" in want:
            got = parse_key(estimate_key([(o, p, d) for o, d, p in notes.tolist()])) if len(notes) else None
            hits["attr_key_exact"].append(got == want["key"])
            hits["attr_key_relative"].append(got is not None and same_collection(got, want["key"]))
        if "meter" in want:
            hits["attr_meter"].append(bool(token_validity(tokenizer, list(ids), want["meter"])["valid"]))
        if "bars" in want:
            hits["attr_bars_exact"].append(n_bars == want["bars"])
        if "length_word" in want:
            hits["attr_length_word"].append(n_bars > 0 and length_word(n_bars) == want["length_word"])
    return {c: (sum(v) / len(v) if v else math.nan) for c, v in hits.items()
            if v or c not in DESCRIPTOR_COLUMNS}
