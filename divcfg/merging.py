"""`divcfg merge A B --lam λ --out C`: linear interpolation (LERP) of two generator checkpoints.

For every tensor name ``k`` shared by both checkpoints (same architecture, same shapes, same
vocabulary),

    θ_λ[k] = (1 - λ)·θ_A[k] + λ·θ_B[k],        λ ∈ [0, 1],

computed in float64 and cast back to the tensor's dtype. λ = 0 and λ = 1 return exact copies of A
and B (no rounding). With A the distilled model (β = 0, quality) and B the diversity model (β = 15),
λ walks the quality–diversity trade-off at deployment time, for the cost of one forward pass per
token (no CFG).

Both checkpoints must agree on the architecture (``config["model"]`` apart from dropout), the
tensor names and shapes, and the tokenizer (``tokenizer.json`` parsed and compared, library-version fields aside); anything else
is refused with a one-line :class:`~divcfg.errors.UserError`. The merged checkpoint is an ordinary
generator checkpoint whose ``config.json`` records ``merge = {a, b, lam, a_hash, b_hash}`` and the
parents' stage records.

``iter_merges(A, B, lams)`` evaluates a λ sweep in memory: it loads A and B once and yields one
model per λ without writing files.

Hugging Face models (``hf:PATH``, both sides): the same LERP over every tensor of the two
``save_pretrained`` folders (same ``config.json`` architecture and the same tokenizer vocabulary, else a
one-line error); the result is written with ``save_pretrained`` (+ tokenizer), loadable by plain
transformers, with the merge record in ``divcfg.json``. ``iter_merged_generators`` yields generator
plug-ins (``divcfg.models.base``) for either kind; ``divcfg evaluate`` uses it.

LoRA students (``divcfg finetune --lora-r``; checkpoints that hold adapters only): each student is
first merged into full weights, ``W_A = W + s_A·B_A·A_A`` and ``W_B = W + s_B·B_B·A_B``, and those
are interpolated: ``θ_λ = (1-λ)·W_A + λ·W_B``. This equals the base plus the LERP of the adapter
*deltas* ``ΔW = s·B·A`` (``W + (1-λ)·ΔW_A + λ·ΔW_B``), which is what we mean; it is **not** the LERP
of A and B separately (``B_λ·A_λ`` has cross terms ``λ(1-λ)(B_A·A_B + B_B·A_A)``). The result is a
plain full checkpoint (no adapters). Adapters may differ in rank and targets.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Iterator, Sequence

import torch

from divcfg.checkpoint import MODEL_FILE, load_checkpoint, resolve_checkpoint_dir
from divcfg.errors import UserError
from divcfg.models.generator import KIND, TOKENIZER_FILE, save_generator
from divcfg.models.transformer import ModelConfig, MusicTransformer
from divcfg.provenance import file_hash, provenance

# config["model"] fields that do not change the weights' meaning
NON_ARCHITECTURE_FIELDS = ("dropout",)


def lerp_state_dicts(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], lam: float
                     ) -> dict[str, torch.Tensor]:
    """``(1-λ)·a + λ·b`` tensor by tensor (float64 arithmetic, original dtype kept).

    λ=0 and λ=1 give exact copies of ``a`` and ``b``. Non-floating tensors (integer buffers) must
    be equal in both and are copied. Mismatched names, shapes or dtypes raise ``UserError``.
    """
    lam = float(lam)
    if not math.isfinite(lam):
        raise UserError(f"merge weight λ must be a finite number, got {lam}")
    if set(a) != set(b):
        only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        raise UserError(f"the two models have different tensors (only in A: {only_a[:3]}, only in B: "
                        f"{only_b[:3]}): merge checkpoints of the same architecture")
    out = {}
    for k, ta in a.items():
        tb = b[k]
        if ta.shape != tb.shape:
            raise UserError(f"tensor '{k}' has shape {tuple(ta.shape)} in A but {tuple(tb.shape)} in B: "
                            f"merge checkpoints of the same architecture")
        if ta.dtype != tb.dtype:
            raise UserError(f"tensor '{k}' is {ta.dtype} in A but {tb.dtype} in B: save both in one dtype")
        if not ta.is_floating_point():
            if not torch.equal(ta, tb):
                raise UserError(f"integer tensor '{k}' differs between A and B: they cannot be interpolated")
            out[k] = ta.clone()
        elif lam == 0.0:
            out[k] = ta.clone()
        elif lam == 1.0:
            out[k] = tb.clone()
        else:
            out[k] = ((1.0 - lam) * ta.double() + lam * tb.double()).to(ta.dtype)
    return out


def _architecture(config: dict) -> dict:
    return {k: v for k, v in config.get("model", {}).items() if k not in NON_ARCHITECTURE_FIELDS}


def _tokenizer(config: dict) -> dict | None:
    path = Path(config["_dir"]) / TOKENIZER_FILE
    if not path.exists():
        return None
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError):
        raise UserError(f"'{path}' is unreadable: the checkpoint is corrupt, retrain it") from None
    # library versions saved beside the vocabulary do not change it
    return {k: v for k, v in data.items() if not k.endswith("_version")} if isinstance(data, dict) else data


def check_compatible(config_a: dict, config_b: dict) -> None:
    """Refuse (one-line ``UserError``) checkpoints that are not two versions of one model."""
    a, b = _architecture(config_a), _architecture(config_b)
    if a != b:
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        k = diff[0]
        raise UserError(f"cannot merge '{config_a['_dir']}' and '{config_b['_dir']}': different architectures "
                        f"({k}={a.get(k)} vs {b.get(k)}{', ...' if len(diff) > 1 else ''}); "
                        f"both must be fine-tuned from the same base")
    ta, tb = _tokenizer(config_a), _tokenizer(config_b)
    if (ta is None) != (tb is None):
        missing = config_a["_dir"] if ta is None else config_b["_dir"]
        raise UserError(f"cannot check vocabularies: '{missing}' has no {TOKENIZER_FILE}; "
                        f"merge checkpoints written by divcfg")
    if ta != tb:
        raise UserError(f"cannot merge '{config_a['_dir']}' and '{config_b['_dir']}': their tokenizers "
                        f"({TOKENIZER_FILE}) differ; both must use the base model's vocabulary")


def load_pair(path_a: str | os.PathLike, path_b: str | os.PathLike
              ) -> tuple[dict[str, torch.Tensor], dict, dict[str, torch.Tensor], dict]:
    """``(state_A, config_A, state_B, config_B)`` after checking they can be merged."""
    state_a, config_a = load_checkpoint(path_a, kind=KIND)
    state_b, config_b = load_checkpoint(path_b, kind=KIND)
    config_a["_dir"] = str(resolve_checkpoint_dir(path_a))
    config_b["_dir"] = str(resolve_checkpoint_dir(path_b))
    check_compatible(config_a, config_b)
    return state_a, config_a, state_b, config_b


def _parent_record(config: dict) -> dict:
    """What a parent was (its stage records), without the architecture and nested parents."""
    return {k: v for k, v in config.items() if k not in ("model", "_dir", "parents")}


def merge_record(config_a: dict, config_b: dict, lam: float) -> dict:
    """The ``config.json`` of a merged checkpoint (``model`` is filled in when saving)."""
    dir_a, dir_b = Path(config_a["_dir"]), Path(config_b["_dir"])
    return {"merge": {"a": str(dir_a), "b": str(dir_b), "lam": float(lam),
                      "a_hash": file_hash(dir_a / MODEL_FILE), "b_hash": file_hash(dir_b / MODEL_FILE),
                      "formula": "(1-lam)*A + lam*B"},
            "parents": {"a": _parent_record(config_a), "b": _parent_record(config_b)},
            "provenance": provenance(None, stage="merge")}


def _check_lam(lam: float) -> float:
    lam = float(lam)
    if not (0.0 <= lam <= 1.0):
        raise UserError(f"--lam must lie in [0, 1] (0 = A, 1 = B), got {lam}")
    return lam


def _model_for(config: dict, state: dict[str, torch.Tensor]) -> MusicTransformer:
    model = MusicTransformer(ModelConfig.from_dict(config["model"]))
    _load_weights(model, state, config["_dir"])
    return model.eval()


def _load_weights(model: MusicTransformer, state: dict[str, torch.Tensor], where: str) -> None:
    """Load a (merged) state dict; ``head.weight`` may be absent (tied to ``tok_emb.weight``)."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise UserError(f"checkpoint '{where}' does not match its config.json "
                        f"({str(e).splitlines()[0][:80]}): it is corrupt, retrain it") from None
    if unexpected or set(missing) - {"head.weight"}:
        raise UserError(f"checkpoint '{where}' has missing/unexpected tensors: it is corrupt, retrain it")


def merge_checkpoints(path_a: str | os.PathLike, path_b: str | os.PathLike, lam: float,
                      out: str | os.PathLike) -> Path:
    """Write ``(1-λ)·A + λ·B`` as a generator checkpoint at ``out``; returns its folder."""
    lam = _check_lam(lam)
    state_a, config_a, state_b, config_b = load_pair(path_a, path_b)
    out = Path(out)
    for parent in (config_a["_dir"], config_b["_dir"]):
        if out.resolve() == Path(parent).resolve():
            raise UserError(f"--out '{out}' would overwrite an input checkpoint: choose another folder")
    model = _model_for(config_a, lerp_state_dicts(state_a, state_b, lam))
    config = merge_record(config_a, config_b, lam)
    return save_generator(out, model, config, Path(config_a["_dir"]) / TOKENIZER_FILE)


def iter_merges(path_a: str | os.PathLike, path_b: str | os.PathLike, lams: Sequence[float]
                ) -> Iterator[tuple[float, MusicTransformer, dict]]:
    """Yield ``(λ, model, config)`` for each λ without writing files.

    A and B are loaded and checked once. One module is reused: each step loads the next merged
    weights into it, so use (or copy) the model before advancing the iterator. ``config`` is the
    record a saved merge would carry, plus ``_dir`` = A's folder (for its tokenizer).
    """
    lams = [_check_lam(x) for x in lams]
    state_a, config_a, state_b, config_b = load_pair(path_a, path_b)
    model = None
    for lam in lams:
        merged = lerp_state_dicts(state_a, state_b, lam)
        if model is None:
            model = _model_for(config_a, merged)
        else:
            _load_weights(model, merged, config_a["_dir"])
        config = merge_record(config_a, config_b, lam)
        config["model"] = dict(config_a["model"])
        config["_dir"] = config_a["_dir"]
        yield lam, model, config


# ---------------------------------------------------------------------------------------------
# any generator plug-in (built-in checkpoints and Hugging Face folders)


def _check_plugins(A, B) -> None:
    if A.kind != B.kind:
        raise UserError(f"cannot merge a {A.kind} model with a {B.kind} model: pass two folders of one kind "
                        f"(both hf:PATH, or both divcfg checkpoints)")
    a, b = A.architecture(), B.architecture()
    if a != b:
        k = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))[0]
        raise UserError(f"cannot merge '{A.path}' and '{B.path}': different architectures ({k}={a.get(k)} vs "
                        f"{b.get(k)}); both must be fine-tuned from the same base")
    if A.vocabulary() != B.vocabulary():
        raise UserError(f"cannot merge '{A.path}' and '{B.path}': their tokenizers differ; both must use the "
                        f"base model's vocabulary")


def _hf_merge_record(A, B, lam: float) -> dict:
    def h(p: Path):
        return file_hash(p / "model.safetensors") if (p / "model.safetensors").exists() else None
    return {"merge": {"a": str(A.path), "b": str(B.path), "lam": float(lam), "a_hash": h(A.path),
                      "b_hash": h(B.path), "formula": "(1-lam)*A + lam*B"},
            "parents": {"a": {k: v for k, v in A.record.items() if k not in ("_dir", "parents")},
                        "b": {k: v for k, v in B.record.items() if k not in ("_dir", "parents")}},
            "provenance": provenance(None, stage="merge")}


def _load_plugin(spec: str, device: str | torch.device = "cpu", **kw):
    """A generator plug-in; a LoRA student comes back with its adapters merged into the weights."""
    from divcfg.finetune.lora import is_lora_checkpoint, load_merged, lora_dir
    from divcfg.models.base import load_generator_any
    if is_lora_checkpoint(spec):
        return load_merged(lora_dir(spec), device, **kw)
    return load_generator_any(spec, device, **kw)


def _plain_builtin(spec_a: str, spec_b: str) -> bool:
    from divcfg.finetune.lora import is_lora_checkpoint
    from divcfg.models.base import is_hf_spec
    return not any(is_hf_spec(s) or is_lora_checkpoint(s) for s in (spec_a, spec_b))


def merge_any(spec_a: str, spec_b: str, lam: float, out: str | os.PathLike) -> Path:
    """``divcfg merge``: built-in checkpoints via :func:`merge_checkpoints`; ``hf:`` folders and LoRA
    students (merged into full weights first, see the module doc) by the same LERP over plug-ins."""
    if _plain_builtin(spec_a, spec_b):
        return merge_checkpoints(spec_a, spec_b, lam, out)
    lam = _check_lam(lam)
    A, B = _load_plugin(spec_a), _load_plugin(spec_b)
    _check_plugins(A, B)
    out = Path(out)
    if out.resolve() in (A.path.resolve(), B.path.resolve()):
        raise UserError(f"--out '{out}' would overwrite an input checkpoint: choose another folder")
    A.load_weights(lerp_state_dicts(A.weights(), B.weights(), lam))
    return A.save(out, _hf_merge_record(A, B, lam))


def iter_merged_generators(spec_a: str, spec_b: str, lams: Sequence[float], device: str = "cpu",
                           null_prompt: str | None = None, max_len: int | None = None) -> Iterator[tuple[float, object]]:
    """``(λ, generator plug-in)`` per λ, in memory (one module reused: use it before advancing);
    ``max_len`` (BOS + tokens + EOS) for Hugging Face endpoints, as ``load_generator_any``."""
    if _plain_builtin(spec_a, spec_b):
        from divcfg.models.builtin import BuiltinGenerator
        for lam, model, config in iter_merges(spec_a, spec_b, lams):
            yield lam, BuiltinGenerator(model.to(device), Path(config["_dir"]), config)
        return
    lams = [_check_lam(x) for x in lams]
    kw = {"null_prompt": null_prompt, "max_len": max_len}
    A = _load_plugin(spec_a, device, **(kw if _is_hf(spec_a) else {}))
    B = _load_plugin(spec_b, "cpu", **(kw if _is_hf(spec_b) else {}))
    _check_plugins(A, B)
    wa, wb = {k: v.cpu().clone() for k, v in A.weights().items()}, B.weights()
    record_a = dict(A.record)
    for lam in lams:
        A.load_weights(lerp_state_dicts(wa, wb, lam))
        A.record = record_a
        A.record = {**record_a, **_hf_merge_record(A, B, lam)}
        yield lam, A


def _is_hf(spec: str) -> bool:
    from divcfg.finetune.lora import is_lora_checkpoint, lora_dir, read_lora_record
    from divcfg.models.base import is_hf_spec
    if is_lora_checkpoint(spec):
        return read_lora_record(lora_dir(spec))[1]["base"].startswith("hf:")
    return is_hf_spec(spec)


def add_arguments(parser) -> None:
    parser.add_argument("a", help="checkpoint A (λ=0), e.g. the distilled β=0 run (hf:PATH for a transformers folder)")
    parser.add_argument("b", help="checkpoint B (λ=1), e.g. the diversity β=15 run (hf:PATH for a transformers folder)")
    from divcfg.config import arg_type
    parser.add_argument("--lam", type=arg_type(float, ge=0, le=1), required=True, help="weight of B: (1-lam)*A + lam*B, in [0, 1]")
    parser.add_argument("--out", required=True, help="folder for the merged checkpoint")


def run(args) -> None:
    out = merge_any(args.a, args.b, args.lam, args.out)
    print(f"wrote (1-{args.lam:g})·A + {args.lam:g}·B -> {out}")
