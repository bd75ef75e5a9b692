"""A diversity student's recipe: reward form, β and the modifiers `divcfg select --candidates` and
`divcfg demo --recipe` take, ``form:β[:gG][:fkl][:tγ][:hotτ][:nN][:sN][:meter|key][:fromb0]``:

- ``gG``: G generations per prompt with the leave-one-out pair baseline and ``16/G`` prompts per step
  (the same 16 samples per step as the paper's G=2 with 8 prompts);
- ``fkl``: the forward KL(teacher ‖ student) instead of the paper's reverse KL;
- ``tγ``: the CFG teacher at γ instead of the demo's γ*, e.g. ``t3``;
- ``hotτ``: the CFG teacher sampled at temperature τ (``--teacher-temperature``), e.g. ``hot1.3``; with it
  β may be 0 (a hotter teacher and no reward: the ablation of the diversity reward);
- ``nN``: training generations of up to N tokens instead of the fine-tuning preset's cap, e.g. ``n512``;
- ``sN``: N training steps instead of the preset's, e.g. ``s480``;
- ``meter`` / ``key``: the reward gate (diversity paid only to generations that keep the prompt's
  meter / also its key);
- ``fromb0``: start from the demo's β=0 student of the same seed instead of the base.

A recipe knows its ``divcfg finetune`` flags and its folder-name suffix; where it is trained and
judged is `divcfg.selection`'s and `divcfg.demo`'s business.
"""

from __future__ import annotations

from dataclasses import dataclass

from divcfg.errors import UserError

FORMS = {"additive": "add", "multiplicative": "mult", "length": "len"}
DIVERGENCE_MODIFIERS = {"fkl": "forward_kl"}   # item modifier → --divergence (default: the paper's reverse KL)
GATE_MODIFIERS = ("meter", "key")               # item modifier → --reward-gate (default: empty, the paper's)
SAMPLES_PER_STEP = 16  # the demo preset's 8 prompts × 2; a G-sample candidate keeps it: 16/G prompts × G


@dataclass(frozen=True)
class Candidate:
    """One diversity-student recipe: reward form, β, generations per prompt G, divergence to the teacher."""
    form: str
    beta: float
    group: int = 2
    divergence: str = "reverse_kl"
    teacher_gamma: float | None = None   # the CFG teacher's γ; None: the demo's γ* (chosen on validation)
    max_new_tokens: int | None = None    # the training generations' token cap; None: the fine-tuning preset's
    steps: int | None = None             # training steps; None: the fine-tuning preset's
    gate: str = "empty"                  # the reward gate (--reward-gate); "empty": the paper's
    from_beta0: bool = False             # start from the demo's β=0 student of the same seed instead of the base
    teacher_temperature: float = 1.0     # the CFG teacher's temperature τ_T (1: the paper's)

    @property
    def modifiers(self) -> str:
        """The item's modifiers as a name suffix: ``_g4_fkl_t3_n512_steps480``, empty for G=2, reverse KL,
        γ* and the preset's token cap and steps (``steps``, never ``s``: seed folders end in ``_s<seed>``)."""
        mods = {v: k for k, v in DIVERGENCE_MODIFIERS.items()}
        return ((f"_g{self.group}" if self.group != 2 else "")
                + (f"_{mods[self.divergence]}" if self.divergence in mods else "")
                + (f"_t{self.teacher_gamma:g}" if self.teacher_gamma is not None else "")
                + (f"_hot{self.teacher_temperature:g}" if self.teacher_temperature != 1.0 else "")
                + (f"_n{self.max_new_tokens}" if self.max_new_tokens is not None else "")
                + (f"_steps{self.steps}" if self.steps is not None else "")
                + (f"_{self.gate}" if self.gate != "empty" else "")
                + ("_fromb0" if self.from_beta0 else ""))

    @property
    def name(self) -> str:
        return f"{FORMS[self.form]}_b{self.beta:g}{self.modifiers}"

    @property
    def label(self) -> str:
        extra = ([f"G={self.group}"] if self.group != 2 else []) + \
            (["forward KL"] if self.divergence == "forward_kl" else []) + \
            ([f"teacher γ={self.teacher_gamma:g}"] if self.teacher_gamma is not None else []) + \
            ([f"teacher τ={self.teacher_temperature:g}"] if self.teacher_temperature != 1.0 else []) + \
            ([f"≤{self.max_new_tokens} tokens in training"] if self.max_new_tokens is not None else []) + \
            ([f"{self.steps} steps"] if self.steps is not None else []) + \
            ([f"{self.gate}-gated"] if self.gate != "empty" else []) + \
            (["from β=0"] if self.from_beta0 else [])
        return f"{self.form} β={self.beta:g}" + (f", {', '.join(extra)}" if extra else "")

    def gamma(self, gamma_star: float) -> float:
        """The teacher's γ for this recipe: its own, else the demo's γ*."""
        return gamma_star if self.teacher_gamma is None else self.teacher_gamma

    def flags(self) -> list[str]:
        """``divcfg finetune`` flags of the recipe (besides ``--beta``)."""
        return ["--reward-form", self.form, *group_flags(self.group),
                *(["--divergence", self.divergence] if self.divergence != "reverse_kl" else []),
                *(["--teacher-temperature", f"{self.teacher_temperature:g}"] if self.teacher_temperature != 1.0 else []),
                *(["--max-new-tokens", str(self.max_new_tokens)] if self.max_new_tokens is not None else []),
                *(["--max-steps", str(self.steps)] if self.steps is not None else []),
                *(["--reward-gate", self.gate] if self.gate != "empty" else [])]


def parse_candidates(text: str, flag: str = "--candidates") -> list[Candidate]:
    """``additive:5,multiplicative:10,additive:5:g4:fkl:t3`` → candidates; after ``form:β`` come optional
    modifiers: ``gG`` (G generations per prompt), ``fkl`` (forward KL to the teacher), ``tγ``
    (the CFG teacher at γ ≥ 1 instead of the demo's γ*), ``hotτ`` (the teacher at temperature τ; β may then
    be 0), ``nN`` (training generations of up to N
    tokens instead of the fine-tuning preset's cap), ``sN`` (N training steps instead of the preset's) and
    ``meter`` or ``key`` (the reward gate) and ``fromb0`` (start from the demo's β=0 student of the same
    seed instead of the base)."""
    out = []
    for item in (x.strip() for x in text.split(",") if x.strip()):
        form, _, rest = item.partition(":")
        beta, *mods = rest.split(":")
        group, divergence, teacher, tokens, steps, gate, from_beta0, hot, ok = \
            2, "reverse_kl", None, None, None, "empty", False, 1.0, form in FORMS
        b = _number(beta)
        b = float("nan") if b is None else b
        for m in mods:
            if m in DIVERGENCE_MODIFIERS:
                divergence = DIVERGENCE_MODIFIERS[m]
            elif m in GATE_MODIFIERS:
                gate = m
            elif m == "fromb0":
                from_beta0 = True
            elif m[:3] == "hot" and 0.05 <= (_number(m[3:]) or 0) <= 20:
                hot = _number(m[3:])
            elif m[:1] == "g" and m[1:].isdigit():
                group = int(m[1:])
            elif m[:1] == "t" and 1 <= (_number(m[1:]) or 0) < float("inf"):
                teacher = _number(m[1:])
            elif m[:1] == "n" and m[1:].isdigit() and int(m[1:]) >= 1:
                tokens = int(m[1:])
            elif m[:1] == "s" and m[1:].isdigit() and int(m[1:]) >= 1:
                steps = int(m[1:])
            else:
                ok = False
        if not ok or not (b > 0 or (b == 0 and hot != 1.0)) or b == float("inf") \
                or not 2 <= group <= SAMPLES_PER_STEP // 2 \
                or SAMPLES_PER_STEP % group:
            raise UserError(f"{flag} takes form:β[:gG][:fkl][:tγ][:hotτ][:nN][:sN][:meter|key][:fromb0] items with form in "
                            f"{', '.join(FORMS)}, β > 0 (or 0 with hotτ), "
                            f"G in 2, 4, 8 (generations per prompt), fkl for a forward-KL student, tγ for a "
                            f"CFG teacher at γ ≥ 1, hotτ for a teacher at temperature 0.05 ≤ τ ≤ 20, nN for training generations of up to N ≥ 1 tokens and sN for N ≥ 1 "
                            f"training steps, meter or key for a reward gate, fromb0 to start from the β=0 student, "
                            f"e.g. additive:5,additive:5:g4:fkl:t3: got {item!r}")
        out.append(Candidate(form, b, group, divergence, teacher, tokens, steps, gate, from_beta0, hot))
    if not out:
        raise UserError(f"{flag} is empty: pass e.g. additive:5,multiplicative:10")
    return out


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def group_flags(group: int) -> list[str]:
    """Fine-tuning flags of a G-sample candidate: G ≥ 3 uses the leave-one-out pair baseline, which
    removes the prompt's own effect on the reward (the batch baseline of G=2 cannot)."""
    if group == 2:
        return []
    return ["--group-size", str(group), "--baseline", "loo", "--prompts-per-step", str(SAMPLES_PER_STEP // group)]
