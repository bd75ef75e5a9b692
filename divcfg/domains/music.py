"""The music domain: the embedded music21 testbed (``divcfg/music/``) behind the domain protocol.

- Prompts: captions of a data set built by ``divcfg data`` (``--data-dir``); training draws a random
  caption variant of a random training piece, evaluation the canonical caption of val/test pieces.
- Condition: the built-in generator's MiniLM caption embedding (``divcfg.prompts``).
- Judges: the diversity embedder E (``--embedder`` checkpoint: ``1 − cos`` of piano-roll ViT embeddings)
  and the text–music alignment scorer (``--scorer``, the MuLan-score analogue), or the user's
  ``module:function`` judges (completions are REMI token-id lists).
- Reward gates: ``empty`` (E could embed it: decodes, has notes), ``meter`` (also the bars keep
  the meter the prompt asks for, ``metrics.bars_consistent``) and ``key`` (also, when the caption names
  the key, the generation's estimated key is it or its relative major/minor).
- Quick figures: the in-key rate (music21-style key estimate vs the key the caption names).
- Output: MIDI (and WAV where a soundfont is installed); WAV clips of an evaluation run for the
  listening study (``music_media``).
- Pre-training data of the built-in generator (``divcfg pretrain``): the data set's splits and tokenizer.
- Registers the TRL-style ``validity`` reward (``divcfg.rewards``).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import NamedTuple, Sequence

import torch

from divcfg.domains.base import Judges, user_or_default_judges
from divcfg.errors import UserError
from divcfg.prompts import Prompts, embed_texts
from divcfg.rewards import register_reward


def check_data_dir(data_dir: str | os.PathLike) -> Path:
    data_dir = Path(data_dir)
    if not (data_dir / "manifest.json").exists():
        raise UserError(f"no data set at '{data_dir}': build it with `divcfg data --preset small` "
                        f"(or pass --data-dir)")
    return data_dir


def load_prompts(data_dir: str | os.PathLike, split: str = "test", limit: int | None = None,
                 seed: int = 0, variants: bool = False) -> Prompts:
    """Prompts of one split; ``limit`` takes a seeded random subset; ``variants`` picks a random
    caption variant per piece instead of the canonical one."""
    from divcfg.music.dataset import load_split
    pieces = load_split(check_data_dir(data_dir), split)
    rng = random.Random(seed)
    if limit is not None and limit < len(pieces):
        pieces = rng.sample(pieces, limit)
    texts = [rng.choice(p["captions"]) if variants else p["captions"][0] for p in pieces]
    return Prompts(texts, embed_texts(texts, data_dir), [p.get("meta", {}) for p in pieces], [p["id"] for p in pieces])


class Ask(NamedTuple):
    """What a training caption asks of a generation, for the reward gates: the meter of the piece it
    describes, and the key (tonic pitch class, mode) when the caption names it (else None)."""
    meter: str | None
    key: tuple[int, str] | None


class TrainPrompts:
    """Training captions (every variant of every training piece), drawn at random per step."""

    def __init__(self, data_dir: Path):
        from divcfg.music.dataset import load_split
        pieces = [p for p in load_split(data_dir, "train") if p.get("captions")]
        self.captions = [p["captions"] for p in pieces]
        self.metas = [p.get("meta", {}) for p in pieces]
        if not self.captions:
            raise UserError(f"data set '{data_dir}' has no training captions: rebuild it with `divcfg data --force`")

    def draw(self, n: int, rng: random.Random) -> tuple[list[str], list[Ask]]:
        """``n`` captions (a random variant of a random piece) and what each asks for (:class:`Ask`)."""
        from divcfg.music.attributes import asked
        idx, texts = [], []
        for _ in range(n):  # piece, then variant: the random stream of the runs reported in the README
            idx.append(rng.randrange(len(self.captions)))
            texts.append(rng.choice(self.captions[idx[-1]]))
        return texts, [Ask(self.metas[i].get("meter"), asked(t, self.metas[i]).get("key")) for i, t in zip(idx, texts)]


def reward_valid(embed_valid: torch.Tensor, seqs: list[list[int]], meters: list[str | None], gate: str,
                 tokenizer, keys: Sequence[tuple[int, str] | None] | None = None) -> torch.Tensor:
    """Which generations may earn diversity reward. ``empty``: those E could embed (decodes, has
    notes) — the paper's reward with degenerate output earning nothing. ``meter``: additionally,
    the bars keep the meter the prompt asks for (``metrics.bars_consistent``, token_validity's
    ``meter_ok``): E is key-blind by construction because the prompt fixes the key; it cannot be
    made meter-blind, so the reward instead refuses to pay for diversity bought by ignoring the
    prompt's meter. ``key``: additionally, where the caption names a key (``keys[r]`` not None), the
    generation's Krumhansl–Schmuckler key estimate is that key or its relative major/minor
    (:func:`keeps_key`): E cannot see a key change, so nothing else stops diversity from wandering
    off the requested key."""
    if gate == "empty":
        return embed_valid
    from divcfg.music.metrics import bars_consistent
    ok = [bars_consistent(tokenizer, ids, m) for ids, m in zip(seqs, meters)]
    if gate == "key":
        ok = [o and (k is None or keeps_key(tokenizer, ids, k)) for o, ids, k in zip(ok, seqs, keys or [None] * len(seqs))]
    return embed_valid & torch.tensor(ok, dtype=torch.bool).to(embed_valid.device)


def keeps_key(tokenizer, ids: Sequence[int], key: tuple[int, str]) -> bool:
    """The generation's key estimate (``captions.estimate_key`` on its notes) is ``key`` (tonic pitch
    class, mode) or its relative major/minor, the evaluation's "key (relative)" convention
    (``attributes.same_collection``); an undecodable or empty generation does not keep it."""
    from divcfg.music.attributes import parse_key, same_collection
    from divcfg.music.captions import estimate_key
    from divcfg.music.pianoroll import score_notes
    from divcfg.music.tokenizer import tokens_to_score
    score = tokens_to_score(tokenizer, list(ids))
    notes = score_notes(score) if score is not None else []
    got = parse_key(estimate_key([(o, p, d) for o, d, p in notes.tolist()])) if len(notes) else None
    return got is not None and same_collection(got, key)


def token_validity_flags(tokenizer, generations, meters) -> list[bool]:
    """``metrics.token_validity(...)["valid"]`` of each generation (decodes, has notes, keeps the meter)."""
    from divcfg.music.metrics import token_validity
    return [bool(token_validity(tokenizer, g, m)["valid"]) for g, m in zip(generations, meters)]


@register_reward("validity")
def validity_reward(prompts: Sequence[str], generations: Sequence[Sequence[int]], *, tokenizer,
                    meters: Sequence[str | None] | None = None, **kw) -> list[float]:
    """The TRL-style ``validity`` reward (``divcfg.rewards``): 1.0 if the sequence decodes to notes with
    bars consistent with the meter passed as ``meters=[...]``, else 0.0."""
    meters = list(meters) if meters is not None else [None] * len(generations)
    return [float(v) for v in token_validity_flags(tokenizer, generations, meters)]


def key_pitch_class(key: str | None) -> tuple[int, str] | None:
    """``"F# minor"`` -> ``(6, "minor")``; None for missing, unparsable or non-major/minor keys."""
    from divcfg.music.attributes import parse_key
    parsed = parse_key(key)
    return parsed if parsed is not None and parsed[1] in ("major", "minor") else None


def in_key_rate(tokenizer, seqs: list[list[int]], requested: list[str | None]) -> float:
    """Fraction of generations whose Krumhansl-Schmuckler key estimate (``captions.estimate_key``)
    is the requested key (same tonic pitch class and mode), over prompts that name a key; an
    empty or undecodable generation counts as a miss. NaN when no prompt names a key."""
    from divcfg.music.captions import estimate_key
    from divcfg.music.pianoroll import score_notes
    from divcfg.music.tokenizer import tokens_to_score
    hits, n = 0, 0
    for ids, key in zip(seqs, requested):
        want = key_pitch_class(key)
        if want is None:
            continue
        n += 1
        notes = score_notes(tokens_to_score(tokenizer, ids))
        got = estimate_key([(o, p, d) for o, d, p in notes.tolist()]) if len(notes) else None
        hits += int(key_pitch_class(got) == want)
    return hits / n if n else float("nan")


class MusicDomain:
    name = "music"
    reward_gates = ("empty", "meter", "key")
    quality_name = "alignment"

    def __init__(self, data_dir: str | Path | None):
        """``data_dir`` (a data set built by ``divcfg data``) is needed for prompts and the corpus
        reference; ``divcfg sample`` writes MIDI from the checkpoint's own tokenizer without one."""
        self.data_dir = check_data_dir(data_dir) if data_dir is not None else None
        self._tokenizer = None
        self._tokenizer_file: Path | None = None

    # ---------------------------------------------------------------- prompts and conditions

    def train_pool(self) -> TrainPrompts:
        return TrainPrompts(self.data_dir)

    def _check_generator(self, generator) -> None:
        if generator is not None and getattr(generator, "kind", "builtin") != "builtin":
            raise UserError("the music testbed conditions the built-in generator only: pass a divcfg "
                            "checkpoint as --base, or --prompts FILE for a Hugging Face text model")

    def condition(self, generator, texts: Sequence[str]) -> torch.Tensor:
        self._check_generator(generator)
        return embed_texts(list(texts))

    def prompts(self, split: str, generator=None, limit: int | None = None, seed: int = 0) -> Prompts:
        self._check_generator(generator)
        return load_prompts(self.data_dir, split, limit=limit, seed=seed)

    # ---------------------------------------------------------------- pre-training data

    def load_split(self, split: str) -> list[dict]:
        """The rows of a split of the data set (``id``, ``captions``, ``meta``, ``tokens``)."""
        from divcfg.music.dataset import load_split
        return load_split(self.data_dir, split)

    def special_ids(self, generator=None) -> dict[str, int]:
        """{"pad", "bos", "eos"} -> token id of the tokenizer (``tokenizer(generator)``)."""
        from divcfg.music.tokenizer import special_ids
        return special_ids(self.tokenizer(generator))

    # ---------------------------------------------------------------- judges

    def prepare_generator(self, generator) -> None:
        """A checkpoint without its own tokenizer.json gets the data set's (copied into the run)."""
        self._check_generator(generator)
        if generator.tokenizer_file is None:
            generator.tokenizer_file = self.data_dir / "tokenizer.json"

    def tokenizer(self, generator=None):
        """The REMI tokenizer of the generator's checkpoint (else the data set's)."""
        tok_file = getattr(generator, "tokenizer_file", None)
        if tok_file is None:
            if self.data_dir is None:
                raise UserError("the checkpoint has no tokenizer.json: pass --data-dir with the data set it was "
                                "trained on")
            tok_file = self.data_dir / "tokenizer.json"
        if self._tokenizer is None or tok_file != self._tokenizer_file:
            from divcfg.music.tokenizer import load_tokenizer
            self._tokenizer, self._tokenizer_file = load_tokenizer(tok_file), tok_file
        return self._tokenizer

    def judges(self, *, embedder: str = "", scorer: str = "", diversity_judge: str = "", quality_judge: str = "",
               device: str = "cpu", need: tuple[str, ...] = ("diversity", "quality"), generator=None,
               required: bool = False) -> Judges:
        """E from ``embedder`` and the scorer from ``scorer`` (None where the path is empty, an error when
        ``required``), or the user's judges. The checkpoints' judges run on the CPU."""
        if required and (not (embedder or diversity_judge) or not (scorer or quality_judge)):
            raise UserError("--embedder and --scorer are required: train them with `divcfg embedder train` "
                            "and `divcfg scorer train` (or pass --diversity-judge/--quality-judge module:function)")
        def default_e():
            if not embedder:
                return None
            from divcfg.music.judges.diversity import load_diversity_embedder
            return load_diversity_embedder(embedder)

        def default_q():
            if not scorer:
                return None
            from divcfg.music.judges.alignment import load_alignment_scorer
            return load_alignment_scorer(scorer)

        judges = user_or_default_judges(diversity_judge, quality_judge, default_e, default_q, need)
        for role, path, user in (("diversity", embedder, diversity_judge), ("quality", scorer, quality_judge)):
            if role in judges.names and not user:
                judges.names[role] = str(path) if path else ""   # the checkpoint that judges
        if generator is not None:
            from divcfg.domains.music_eval import check_vocabularies
            check_vocabularies(self, judges, generator)
        return judges

    def reward_valid(self, gate: str, completions: list, infos: list, embedded: torch.Tensor,
                     generator=None) -> torch.Tensor:
        if gate not in self.reward_gates:
            raise UserError(f"--reward-gate must be one of {', '.join(self.reward_gates)}")
        tok = self.tokenizer(generator) if gate != "empty" else None
        return reward_valid(embedded, completions, [a.meter for a in infos], gate, tok, [a.key for a in infos])

    def quick_figures(self, completions: list, prompts, G: int, generator=None) -> dict[str, float]:
        keys = [m.get("key") for m in prompts.meta for _ in range(G)]
        return {"in_key_rate": in_key_rate(self.tokenizer(generator), completions, keys)}

    # ---------------------------------------------------------------- evaluation and output

    eval_figures = ("pitch_class_distance", "onset_distance", "interval_ngram_distance", "distinct_ngram_ratio")
    eval_extra_columns = ("musical_distance", "attr_key_exact", "attr_key_relative", "attr_meter", "attr_bars_exact",
                          "attr_length_word")  # the domain figures: divcfg.music.attributes.ATTRIBUTE_COLUMNS

    def judge(self, prompts, completions: list, rows: dict, G: int, judges: Judges, generator=None) -> dict:
        from divcfg.domains.music_eval import judge_music
        return judge_music(self, prompts, completions, G, judges, generator)

    def summary_extras(self, judged: dict, reference: dict) -> dict:
        from divcfg.domains.music_eval import summary_extras
        return summary_extras(judged, reference)

    def reference(self, prompts, judges: Judges, split: str = "test", max_pieces: int = 256, seed: int = 0) -> dict:
        from divcfg.domains.music_eval import corpus_figures
        return corpus_figures(self.data_dir, split, prompts, judges, max_pieces, seed)

    def run_tokenizer(self, results: dict):
        """The tokenizer of an evaluation run (``results.json``): a system checkpoint's, else the data set's."""
        from divcfg.domains.music_media import tokenizer_for
        return tokenizer_for(results)

    def render_clip(self, tokenizer, tokens: list[int], path: Path, beats: int, sample_rate: int) -> bool:
        """The first ``beats`` quarter notes of ``tokens`` as a WAV clip at ``path``; True when empty (silence)."""
        from divcfg.domains.music_media import render_clip
        return render_clip(tokenizer, tokens, path, beats, sample_rate)

    def write(self, out: Path, rows: list[dict], generator) -> list[str]:
        from divcfg.music.render import write_midi, write_wav
        from divcfg.music.tokenizer import tokens_to_score
        from divcfg.sample import slug
        tok = self.tokenizer(generator)
        files, wav_ok = [], None
        for r in rows:
            stem = out / f"{slug(r['prompt'])}_{r['index']}"
            score = tokens_to_score(tok, r["tokens"])
            r["n_notes"] = 0 if score is None else sum(len(t.notes) for t in score.tracks)
            if score is None or r["n_notes"] == 0:
                print(f"warning: {stem.name} has no notes (undecodable or empty); no files written for it")
                continue
            write_midi(score, stem.with_suffix(".mid"))
            r["midi"] = r["file"] = str(stem.with_suffix(".mid"))
            files.append(r["midi"])
            if wav_ok is not False:
                wav_ok = write_wav(score, stem.with_suffix(".wav"))
                if wav_ok:
                    r["wav"] = str(stem.with_suffix(".wav"))
                    files.append(r["wav"])
        return files
