"""The text domain: prompts from a file, MiniLM judges, completions written as text.

**Prompts** (``--prompts FILE``): ``.txt`` one prompt per line (blank lines skipped), or ``.jsonl``
with a ``"prompt"`` field per line; duplicates are dropped (first kept). **Split**, deterministic
and stable when the file grows: the first 8 hex digits of ``sha256(prompt)`` modulo 10 — 0–7 train,
8 validation, 9 test (about 80/10/10; each prompt stays in its split whatever else the file holds).

**Judges** (``divcfg.judges.text``): diversity ``1 − cos`` of MiniLM embeddings of two completions of
one prompt; quality ``cos(MiniLM(prompt), MiniLM(completion))`` — prompt–completion similarity, a
topical-relatedness proxy, stated as such. ``--diversity-judge`` / ``--quality-judge module:function``
replace either (``divcfg.judges.base`` gives the two forms).

**Validity**: a completion is valid when it is not empty (whitespace only). Evaluation adds a
surface diversity figure beside the embedder's: ``distinct_2``, the distinct word bigrams of a
prompt's G completions over their total.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path
from typing import Sequence

import torch

from divcfg.domains.base import Judges, user_or_default_judges
from divcfg.errors import UserError
from divcfg.prompts import Prompts

SPLITS = ("train", "val", "test")


def split_of(prompt: str) -> str:
    h = int(hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:8], 16) % 10
    return "train" if h < 8 else ("val" if h == 8 else "test")


def read_prompt_file(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.exists():
        raise UserError(f"prompt file '{path}' not found: pass --prompts FILE (.txt one prompt per line, "
                        f"or .jsonl with a 'prompt' field)")
    texts: list[str] = []
    if path.suffix == ".jsonl":
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"{path}:{n} is not JSON: write one object per line with a 'prompt' field") from None
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise UserError(f"{path}:{n} has no string 'prompt' field: write {{\"prompt\": \"...\"}} per line")
            texts.append(row["prompt"])
    else:
        texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    texts = list(dict.fromkeys(t for t in texts if t.strip()))
    if not texts:
        raise UserError(f"prompt file '{path}' holds no prompts: write one per line")
    return texts


class TextPool:
    def __init__(self, texts: list[str]):
        self.texts = texts

    def draw(self, n: int, rng: random.Random) -> tuple[list[str], list[None]]:
        return [self.texts[rng.randrange(len(self.texts))] for _ in range(n)], [None] * n


def distinct_2(completions: Sequence[str]) -> float:
    """Distinct word bigrams over all bigrams of the completions (nan when none has two words)."""
    grams = []
    for c in completions:
        w = re.findall(r"\w+|[^\w\s]", str(c).lower())
        grams += list(zip(w, w[1:]))
    return len(set(grams)) / len(grams) if grams else float("nan")


class TextDomain:
    name = "text"
    reward_gates = ("empty",)
    quality_name = "quality"
    eval_figures = ("distinct_2",)
    eval_extra_columns: tuple[str, ...] = ()

    def __init__(self, prompts_file: str | Path | None):
        """``prompts_file`` None: a domain for writing outputs only (no prompts)."""
        self.file = Path(prompts_file) if prompts_file is not None else None
        self.all = read_prompt_file(self.file) if self.file is not None else []
        self.by_split = {s: [t for t in self.all if split_of(t) == s] for s in SPLITS}

    def split(self, split: str) -> list[str]:
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}: use train, val or test")
        texts = self.by_split[split]
        if not texts:
            raise UserError(f"the '{split}' split of '{self.file}' is empty ({len(self.all)} prompts; about 10% "
                            f"go to val and to test by a hash of the text): add more prompts")
        return texts

    def train_pool(self) -> TextPool:
        return TextPool(self.split("train"))

    def condition(self, generator, texts: Sequence[str]) -> torch.Tensor:
        return generator.encode_prompts(list(texts))

    def prompts(self, split: str, generator, limit: int | None = None, seed: int = 0) -> Prompts:
        texts = list(self.split(split))
        if limit is not None and limit < len(texts):
            texts = random.Random(seed).sample(texts, limit)
        ids = [hashlib.sha256(t.encode("utf-8")).hexdigest()[:12] for t in texts]
        return Prompts(texts, self.condition(generator, texts), [{} for _ in texts], ids)

    def judges(self, *, embedder: str = "", scorer: str = "", diversity_judge: str = "", quality_judge: str = "",
               device: str = "cpu", need: tuple[str, ...] = ("diversity", "quality"), generator=None,
               required: bool = False) -> Judges:
        from divcfg.judges.text import MiniLMDiversity, PromptSimilarityQuality
        return user_or_default_judges(diversity_judge, quality_judge, lambda: MiniLMDiversity(device),
                                      lambda: PromptSimilarityQuality(device), need)

    def prepare_generator(self, generator) -> None:
        """Nothing to add: a text LM's plug-in carries its tokenizer."""

    def reward_valid(self, gate: str, completions: list, infos: list, embedded: torch.Tensor,
                     generator=None) -> torch.Tensor:
        if gate != "empty":
            raise UserError(f"--reward-gate {gate} is a music gate: the text domain has only 'empty'")
        return embedded

    def quick_figures(self, completions: list, prompts, G: int, generator=None) -> dict[str, float]:
        return {"distinct_2": distinct_2(completions)}

    # ---------------------------------------------------------------- evaluation

    def judge(self, prompts, completions: list, rows: dict, G: int, judges: Judges, generator=None) -> dict:
        from divcfg.judges.pairs import group_mean_diversity
        K = len(prompts)
        texts = [prompts.texts[r // G] for r in range(len(completions))]
        q = judges.quality.score(texts, completions).float().cpu()
        d_prompt = group_mean_diversity(judges.diversity, completions, G)
        valid = [bool(str(c).strip()) for c in completions]
        d2 = [distinct_2(completions[k * G:(k + 1) * G]) for k in range(K)]
        return {"per_generation": {"quality": q.tolist(), "valid": valid, "n_notes": [int(v) for v in valid],
                                   "completion": [str(c) for c in completions]},
                "per_prompt": {"quality": q.view(K, G).mean(1).tolist(), "diversity": d_prompt.tolist(),
                               "distinct_2": d2},
                "summary": {}}

    def summary_extras(self, judged: dict, reference: dict) -> dict:
        return {}

    def reference(self, prompts, judges: Judges, **kw) -> dict:
        """The diversity of *different* prompts' texts (k, k+1): a scale for the diversity axis."""
        out = {"diversity_between_prompts": float("nan")}
        if len(prompts) >= 2 and judges.diversity is not None:
            e, _ = judges.diversity.embed_with_mask(list(prompts.texts))
            out["diversity_between_prompts"] = float((1 - (e * e.roll(-1, 0)).sum(1)).mean())
        return out

    def write(self, out: Path, rows: list[dict], generator) -> list[str]:
        from divcfg.sample import slug
        files = []
        for r in rows:
            path = out / f"{slug(r['prompt'])}_{r['index']}.txt"
            path.write_text(r["completion"] + "\n", encoding="utf-8")
            r["file"] = str(path)
            files.append(str(path))
        return files
