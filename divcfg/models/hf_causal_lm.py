"""A Hugging Face causal language model as a divcfg generator (the protocol of
``divcfg.models.transformer``, used by ``divcfg.sampling``, ``divcfg.guidance`` and
``divcfg.objectives``).

The condition is a *text prompt in the model's own vocabulary*: ``cond`` is a LongTensor (B, P) of
prompt token ids, **left-padded** with ``prompt_pad_id`` (see ``encode_prompts``). The null prompt
``∅`` is a fixed, short id sequence (an empty caption, or nothing at all) that replaces row i's
prompt where ``null_mask[i]`` is True or ``cond`` is None. Each row is laid out as::

    [PAD … PAD] [p_1 … p_n] [BOS] y_1 … y_L [EOS] [PAD …]
     └ masked ┘ └ prompt x ┘ └──── tokens, as in the built-in generator ────┘

Rows with prompts of different lengths (cond rows and null rows of one CFG batch included) are
left-padded to a common width W; the leading pads get ``attention_mask = 0`` and the real tokens
get position ids ``0, 1, 2, …`` counted from their own first prompt token
(``position = cumsum(attention_mask) − 1``), so a padded row computes exactly what the same row
computes alone. ``forward`` returns logits for the token positions only:
``logits[:, t]`` predicts ``tokens[:, t+1]``; with ``ℓ_c`` from the prompt and ``ℓ_u`` from ∅,
``divcfg.guidance.cfg_logprobs`` gives the CFG distribution
``log_softmax((1−γ)·log_softmax(ℓ_u) + γ·log_softmax(ℓ_c))``, the same as transformers'
``UnbatchedClassifierFreeGuidanceLogitsProcessor`` after a log_softmax.

``forward_step`` keeps a ``transformers`` ``DynamicCache`` plus the running attention mask and
per-row positions: the first call (empty cache) prefills prompt + tokens, later calls feed one
token (or a few) per row; its logits equal ``forward``'s recomputation up to float rounding.

Requirements on the ids: BOS, EOS and PAD must be three different ids (the sampler forbids BOS
and PAD as continuations, so an EOS equal to either could never be sampled). GPT-2-style
tokenizers with a single ``<|endoftext|>`` therefore need an added token (see
``docs/bring_your_own_model.md``). A prompt is "its tokens after the leading ``prompt_pad_id``s",
so a prompt must not *start* with that id; pass ``prompt_pad_id=-1`` where that can happen.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from divcfg.errors import UserError


@dataclass
class HFGeneratorConfig:
    """The protocol fields (``bos_id``, ``eos_id``, ``pad_id``, ``max_len``, ``vocab_size``) plus
    the adapter's own: the null prompt and the id that left-pads ``cond``."""
    bos_id: int
    eos_id: int
    pad_id: int
    max_len: int             # token positions (BOS + generation + EOS), prompt excluded
    vocab_size: int
    null_prompt_ids: list[int] = field(default_factory=list)
    prompt_pad_id: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class HFKVCache:
    """State of ``forward_step``: the transformers cache, the attention mask of everything fed so
    far (B, S), and the position id the next token of each row gets (B,)."""
    batch: int
    kv: object | None = None
    attention_mask: torch.Tensor | None = None
    next_position: torch.Tensor | None = None
    pos: int = 0             # columns fed so far (prompt width included); 0 = empty
    n_tokens: int = 0        # token positions fed so far (prompt excluded), at most max_len


def _new_dynamic_cache(config) -> object:
    from transformers import DynamicCache
    try:
        return DynamicCache(config=config)
    except TypeError:        # transformers < 4.56 has no config argument
        return DynamicCache()


class HFCausalLMGenerator(nn.Module):
    """Wraps ``model`` (an ``AutoModelForCausalLM``-style module called as
    ``model(input_ids, attention_mask=, position_ids=, cache|past_key_values=, use_cache=)``).

    ``null_prompt_ids``: the unconditional prompt ∅ (may be empty). ``bos_id`` starts the
    generated part, ``eos_id`` ends it, ``pad_id`` fills it after EOS. ``max_len`` bounds the
    generated part (BOS + tokens + EOS); prompt length + ``max_len`` must fit the model's
    position range. ``prompt_pad_id`` (default ``pad_id``) is the id that left-pads ``cond``.
    """

    def __init__(self, model: nn.Module, *, null_prompt_ids, bos_id: int, eos_id: int, pad_id: int,
                 max_len: int, prompt_pad_id: int | None = None):
        super().__init__()
        vocab = int(model.config.vocab_size)
        ids = {"bos_id": bos_id, "eos_id": eos_id, "pad_id": pad_id}
        for name, v in ids.items():
            if v is None or not 0 <= int(v) < vocab:
                raise UserError(f"{name}={v} is not a token id of the model (vocabulary {vocab}): "
                                f"pass an id in [0, {vocab}) (add a special token if the tokenizer lacks one)")
        if len({int(v) for v in ids.values()}) < 3:
            raise UserError(f"bos_id, eos_id and pad_id must differ (got {bos_id}, {eos_id}, {pad_id}): "
                            f"add a separate special token, e.g. tokenizer.add_special_tokens(...) "
                            f"+ model.resize_token_embeddings(len(tokenizer))")
        null = [int(i) for i in (null_prompt_ids.tolist() if torch.is_tensor(null_prompt_ids) else null_prompt_ids)]
        if any(not 0 <= i < vocab for i in null):
            raise UserError(f"null_prompt_ids {null} contain ids outside the vocabulary [0, {vocab})")
        self.lm = model
        self.cfg = HFGeneratorConfig(int(bos_id), int(eos_id), int(pad_id), int(max_len), vocab, null,
                                     int(pad_id if prompt_pad_id is None else prompt_pad_id))
        self.register_buffer("null_prompt", torch.tensor(null, dtype=torch.long), persistent=False)
        params = inspect.signature(model.forward).parameters
        # transformers 5 renamed `past_key_values` to `cache` (the old name warns until 5.40)
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._keep_last = "logits_to_keep" in params
        self._max_positions = getattr(model.config, "max_position_embeddings", None) \
            or getattr(model.config, "n_positions", None)

    @classmethod
    def from_tokenizer(cls, model: nn.Module, tokenizer, *, max_len: int, null_prompt: str = "",
                       bos_id: int | None = None, eos_id: int | None = None, pad_id: int | None = None,
                       add_special_tokens: bool = False) -> "HFCausalLMGenerator":
        """Ids from a Hugging Face tokenizer: BOS/EOS/PAD default to the tokenizer's special
        tokens, ∅ = ``tokenizer(null_prompt)`` (empty text: an empty null prompt)."""
        null = tokenizer(null_prompt, add_special_tokens=add_special_tokens)["input_ids"] if null_prompt else []
        return cls(model, null_prompt_ids=null,
                   bos_id=tokenizer.bos_token_id if bos_id is None else bos_id,
                   eos_id=tokenizer.eos_token_id if eos_id is None else eos_id,
                   pad_id=tokenizer.pad_token_id if pad_id is None else pad_id, max_len=max_len)

    # ------------------------------------------------------------------ prompts

    def prompts(self, cond: torch.Tensor | None, null_mask: torch.Tensor | None, batch: int,
                device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids, attention_mask)`` (B, W): each row's prompt (∅ for null rows) left-padded to the
        batch's longest; columns that are padding in every row are dropped."""
        null = self.null_prompt.to(device)
        n = null.shape[0]
        null_ids = null.unsqueeze(0).expand(batch, n)
        null_att = torch.ones(batch, n, dtype=torch.long, device=device)
        if cond is None:
            return null_ids, null_att
        if cond.dtype not in (torch.long, torch.int32, torch.int64) or cond.dim() != 2:
            raise ValueError(f"cond must be a (B, P) integer tensor of left-padded prompt ids, got "
                             f"{tuple(cond.shape)} {cond.dtype}")
        if cond.shape[0] != batch:
            raise ValueError(f"cond has {cond.shape[0]} rows for a batch of {batch}")
        cond = cond.long()
        att = ((cond != self.cfg.prompt_pad_id).long().cumsum(1) > 0).long()  # from the first real token on
        if null_mask is not None and bool(null_mask.any()):
            W = max(cond.shape[1], n)
            cond = _left_pad(cond, W, self.cfg.prompt_pad_id)
            att = _left_pad(att, W, 0)
            null_ids, null_att = _left_pad(null_ids, W, self.cfg.prompt_pad_id), _left_pad(null_att, W, 0)
            rows = null_mask.to(device).view(batch, 1)
            cond = torch.where(rows, null_ids, cond)
            att = torch.where(rows, null_att, att)
        keep = att.any(0)
        if not bool(keep.all()):  # left padding: the dropped columns are a leading block
            first = int(keep.long().argmax()) if bool(keep.any()) else att.shape[1]
            cond, att = cond[:, first:], att[:, first:]
        ids = torch.where(att.bool(), cond, torch.full_like(cond, self.cfg.pad_id))  # never feed a negative id
        return ids, att

    def _check_length(self, prompt_att: torch.Tensor, n_tokens: int) -> None:
        if n_tokens > self.cfg.max_len:
            raise ValueError(f"sequence of {n_tokens} tokens exceeds max_len={self.cfg.max_len}")
        if self._max_positions is not None:
            longest = int(prompt_att.sum(1).max()) if prompt_att.numel() else 0
            if longest + n_tokens > self._max_positions:
                raise ValueError(f"prompt of {longest} + {n_tokens} tokens exceeds the model's "
                                 f"{self._max_positions} positions")

    def _call(self, ids, att, pos, cache=None, last_only: bool = False):
        kw = {"input_ids": ids, "attention_mask": att, "position_ids": pos,
              "use_cache": cache is not None, self._cache_arg: cache}
        if last_only and self._keep_last:
            kw["logits_to_keep"] = 1
        return self.lm(**kw).logits

    # ------------------------------------------------------------------ protocol

    def forward(self, tokens: torch.Tensor, cond: torch.Tensor | None = None,
                null_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, V) for token positions; ``logits[:, t]`` predicts ``tokens[:, t+1]``."""
        B, T = tokens.shape
        p_ids, p_att = self.prompts(cond, null_mask, B, tokens.device)
        self._check_length(p_att, T)
        att = torch.cat([p_att, torch.ones_like(tokens)], dim=1)
        pos = (att.cumsum(1) - 1).clamp(min=0)
        logits = self._call(torch.cat([p_ids, tokens], dim=1), att, pos)
        return logits[:, p_ids.shape[1]:]

    def new_cache(self, batch: int, dtype: torch.dtype | None = None) -> HFKVCache:
        return HFKVCache(batch)

    def forward_step(self, tokens: torch.Tensor, cache: HFKVCache, cond: torch.Tensor | None = None,
                     null_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Incremental forward. On an empty cache the prompt is prepended (prefill); returns the
        logits (B, V) of the next token after the last of ``tokens``."""
        B, T = tokens.shape
        if B != cache.batch:
            raise ValueError(f"cache made for {cache.batch} rows, got {B}")
        if cache.n_tokens + T > self.cfg.max_len:
            raise ValueError(f"KV cache full: max_len={self.cfg.max_len} tokens")
        ones = torch.ones_like(tokens)
        if cache.pos == 0:
            p_ids, p_att = self.prompts(cond, null_mask, B, tokens.device)
            self._check_length(p_att, T)
            ids, att = torch.cat([p_ids, tokens], dim=1), torch.cat([p_att, ones], dim=1)
            pos = (att.cumsum(1) - 1).clamp(min=0)
            cache.kv = _new_dynamic_cache(self.lm.config)
        else:
            ids, att = tokens, torch.cat([cache.attention_mask, ones], dim=1)
            pos = cache.next_position.unsqueeze(1) + torch.arange(T, device=tokens.device)
        logits = self._call(ids, att, pos, cache.kv, last_only=True)
        cache.attention_mask = att
        cache.next_position = pos[:, -1] + 1
        cache.pos = att.shape[1]
        cache.n_tokens += T
        return logits[:, -1]


def _left_pad(x: torch.Tensor, width: int, value: int) -> torch.Tensor:
    if x.shape[1] >= width:
        return x
    pad = torch.full((x.shape[0], width - x.shape[1]), value, dtype=x.dtype, device=x.device)
    return torch.cat([pad, x], dim=1)


def encode_prompts(tokenizer, texts: list[str], *, pad_id: int | None = None, add_special_tokens: bool = False,
                   max_length: int | None = None) -> torch.Tensor:
    """``cond`` (B, P) for ``HFCausalLMGenerator``: each text tokenised by a Hugging Face
    tokenizer and left-padded with ``pad_id`` (default ``tokenizer.pad_token_id``) to the longest.
    ``max_length`` keeps each prompt's *last* tokens (next to the generation)."""
    if isinstance(texts, str):
        texts = [texts]
    pad = tokenizer.pad_token_id if pad_id is None else pad_id
    if pad is None:
        raise UserError("the tokenizer has no pad token: pass pad_id=... (the generator's prompt_pad_id)")
    rows = tokenizer(list(texts), add_special_tokens=add_special_tokens)["input_ids"]
    if max_length is not None:
        rows = [r[-max_length:] if max_length > 0 else [] for r in rows]
    width = max((len(r) for r in rows), default=0)
    return torch.tensor([[pad] * (width - len(r)) + list(r) for r in rows], dtype=torch.long).view(len(rows), width)
