"""LoRA fine-tuning (``--lora-r``): the adapter-disabled teacher is the base exactly, only adapters
train, a merge of two LoRA students is the LERP of their merged weights, ``--merge-lora`` writes a
plain checkpoint; gradient checkpointing gives the same gradients; the bf16 teacher. Tiny models
built in code (the built-in transformer and a 2-layer GPT-2), the tiny real data set for runs."""

import contextlib
import json
import types
from pathlib import Path

import pytest
import torch

from divcfg.checkpoint import load_checkpoint
from divcfg.finetune import PRESETS, FinetuneConfig, finetune
from divcfg.finetune import lora
from divcfg.finetune.quick_eval import VocabRestriction
from divcfg.finetune.setup import checkpoint_blocks, load_models, make_optimizer
from divcfg.guidance import guided_sequence_logprobs
from divcfg.merging import merge_any
from divcfg.models.base import load_generator_any
from divcfg.models.generator import load_generator, save_generator
from divcfg.models.transformer import ModelConfig, MusicTransformer


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def base_ckpt(tiny_data_dir, tmp_path_factory):
    from divcfg.music.tokenizer import load_tokenizer, special_ids
    tok = load_tokenizer(tiny_data_dir)
    ids = special_ids(tok)
    torch.manual_seed(0)
    model = MusicTransformer(ModelConfig(vocab_size=len(tok), n_layer=2, n_head=2, d_model=32, n_prefix=2,
                                         max_len=64, dropout=0.0, pad_id=ids["pad"], bos_id=ids["bos"],
                                         eos_id=ids["eos"]))
    with torch.no_grad():
        for p in model.cond_proj.parameters():
            p.mul_(20)
        model.ln_f.weight.mul_(15)
    path = tmp_path_factory.mktemp("base") / "checkpoint"
    save_generator(path, model, {"provenance": {"note": "tiny random test base"}}, tiny_data_dir / "tokenizer.json")
    return path


def cfg_for(data_dir, base, out, **kw) -> FinetuneConfig:
    values = {**PRESETS["tiny"], "data_dir": str(data_dir), "base": str(base), "out": str(out), "embedder": "",
              "threads": 1, "lora_r": 4, "eval_every": 0, "eval_teacher": False, "eval_prompts": 2,
              "max_new_tokens": 16, "eval_max_new_tokens": 16, **kw}
    return FinetuneConfig(**values)


def lora_student(base, r=4, targets=""):
    """A LoRA student of the base checkpoint with random (non-zero) adapters, and its teacher."""
    plugin = load_generator_any(base)
    for p in plugin.model.parameters():
        p.requires_grad_(False)
    cfg = types.SimpleNamespace(lora_r=r, lora_alpha=8.0, lora_dropout=0.0, lora_target_modules=targets)
    student, teacher = lora.make_lora_student(plugin, lora.lora_settings(cfg, plugin), str(base))
    with torch.no_grad():
        for name, p in student.model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.3)
    return student, teacher


def batch(model, n=3, T=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(3, model.cfg.vocab_size, (n, T), generator=g)
    x[:, 0] = model.cfg.bos_id
    return x, torch.randn(n, 384, generator=g)


def test_disabled_adapter_teacher_is_the_base_exactly_and_shares_its_weights(base_ckpt):
    student, teacher = lora_student(base_ckpt)
    base = load_generator_any(base_ckpt)
    x, cond = batch(base.model)
    with torch.no_grad():
        t = guided_sequence_logprobs(teacher.model, x, cond, 3.0, "batched")
        b = guided_sequence_logprobs(base.model, x, cond, 3.0, "batched")
        s = guided_sequence_logprobs(student.model, x, cond, 3.0, "batched")
    assert torch.equal(t, b)
    assert (s - b).abs().max() > 1e-3          # the adapters do change the student
    # one copy of the base weights: the teacher's module is the student's
    assert teacher.model.module is student.model
    qkv = student.model.blocks[0].attn.qkv
    assert qkv.base_layer.weight.requires_grad is False and qkv.lora_A["default"].weight.requires_grad


def test_only_adapter_parameters_change_in_an_update(base_ckpt):
    from divcfg.finetune.loop import update
    student, teacher = lora_student(base_ckpt)
    model = student.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = types.SimpleNamespace(updates_per_batch=2, divergence="reverse_kl", jsd_beta=0.5, beta=0.0,
                                pg_normalise="token", grad_clip=1.0, lr=1e-2, weight_decay=0.1, warmup_steps=0)
    opt, sched = make_optimizer(model, cfg)
    restrict = VocabRestriction(model.cfg.vocab_size, [model.cfg.pad_id, model.cfg.bos_id])
    x, cond = batch(model)
    targets = restrict.columns(torch.roll(x, -1, 1).clamp(min=3))
    mask = torch.ones_like(x, dtype=torch.bool)
    with torch.no_grad():
        teacher_lp = restrict.logprobs(guided_sequence_logprobs(teacher.model, x, cond, 3.0, "batched"))
    update(student, x, cond, targets, mask, teacher_lp, None, cfg, opt, sched, False, restrict, lambda *a: None)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed), sorted(changed)[:5]
    assert {n for n in before if "lora_" in n} == changed


def _merged_by_hand(ckpt: Path, base: dict) -> dict:
    """W + (alpha/r)·B·A from the adapter tensors, computed without peft."""
    state, config = load_checkpoint(ckpt)
    s = config["lora"]["alpha"] / config["lora"]["r"]
    out = {k: v.double().clone() for k, v in base.items()}
    for k in state:
        if ".lora_A." in k:
            name = k.split("base_model.model.", 1)[1].split(".lora_A.")[0] + ".weight"
            out[name] += s * state[k.replace("lora_A", "lora_B")].double() @ state[k].double()
    return out


def test_merge_of_two_lora_students_is_the_lerp_of_their_merged_weights(base_ckpt, tmp_path):
    base, _ = load_checkpoint(base_ckpt)
    a, _ = lora_student(base_ckpt, r=4)
    b, _ = lora_student(base_ckpt, r=2, targets="qkv,mlp.2")      # other rank, other targets
    a.save(tmp_path / "a", {"note": "A"})
    b.save(tmp_path / "b", {"note": "B"})
    assert all("lora_" in k for k in load_checkpoint(tmp_path / "a")[0])   # adapters only
    lam = 0.3
    merge_any(str(tmp_path / "a"), str(tmp_path / "b"), lam, tmp_path / "ab")
    merged, config = load_checkpoint(tmp_path / "ab")
    assert "lora" not in config and config["merge"]["lam"] == lam
    wa, wb = _merged_by_hand(tmp_path / "a", base), _merged_by_hand(tmp_path / "b", base)
    for k, v in merged.items():
        expect = (1 - lam) * wa[k] + lam * wb[k]
        assert torch.allclose(v.double(), expect, atol=1e-6), k
    assert not torch.allclose(merged["blocks.0.attn.qkv.weight"], base["blocks.0.attn.qkv.weight"])


def test_run_resume_and_merge_lora_write_a_plain_checkpoint(tiny_data_dir, base_ckpt, tmp_path):
    out = tmp_path / "run"
    finetune(cfg_for(tiny_data_dir, base_ckpt, out, max_steps=2, ckpt_every=1), progress=False)
    config = json.loads((out / "checkpoint" / "config.json").read_text())
    assert config["lora"]["r"] == 4 and config["trainable_parameters"] < config["parameters"] / 4
    finetune(cfg_for(tiny_data_dir, base_ckpt, out, max_steps=3, ckpt_every=1, merge_lora=True),
             resume=True, progress=False)
    steps = [json.loads(line)["step"] for line in open(out / "metrics.jsonl") if '"kl/teacher"' in line]
    assert steps == [1, 2, 3]
    state, merged_config = load_checkpoint(out / "merged")
    assert "lora" not in merged_config and not any("lora" in k for k in state)
    plain, _ = load_generator(out / "merged")                     # an ordinary generator checkpoint
    via_adapters = lora.load_merged(out / "checkpoint").model
    x, cond = batch(plain)
    with torch.no_grad():
        assert torch.allclose(plain(x, cond), via_adapters(x, cond), atol=1e-5)
        base = load_generator(base_ckpt)[0]
        assert (plain(x, cond) - base(x, cond)).abs().max() > 0   # it trained


@contextlib.contextmanager
def counting_saved_tensors():
    """Counts the tensors autograd saves for the backward pass outside checkpointed blocks."""
    n = [0]

    def pack(t):
        n[0] += 1
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield n


def test_gradient_checkpointing_gives_the_same_gradients(base_ckpt):
    grads, counts = [], []
    for ckpt in (False, True):
        model = load_generator(base_ckpt)[0]
        if ckpt:
            assert checkpoint_blocks(model) == 2
        x, cond = batch(model)
        with counting_saved_tensors() as saved:
            loss = model(x, cond).float().logsumexp(-1).mean()
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        counts.append(saved[0])
    assert counts[1] < counts[0] / 2, counts        # the blocks' activations were not kept
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6), n


def test_gradient_checkpointing_of_a_hugging_face_model_gives_the_same_gradients(tmp_path):
    from test_hf_cli import make_tiny_lm
    folder = make_tiny_lm(tmp_path / "lm")
    grads, counts = [], []
    for ckpt in (False, True):
        g = load_generator_any(f"hf:{folder}", max_len=12)
        if ckpt:
            assert checkpoint_blocks(g.model) == 2                 # GPT-2's transformer.h
        x = torch.tensor([[g.model.cfg.bos_id, 5, 6, 7, 8]])
        with counting_saved_tensors() as saved:
            loss = g.model(x, g.encode_prompts(["a happy song"])).float().logsumexp(-1).mean()
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in g.model.named_parameters() if p.grad is not None})
        counts.append(saved[0])
    assert counts[1] < counts[0] / 2, counts
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6), n


def test_bf16_teacher_copy(tiny_data_dir, base_ckpt, tmp_path):
    cfg = cfg_for(tiny_data_dir, base_ckpt, tmp_path / "r", lora_r=0, teacher_dtype="bf16")
    student, teacher, _ = load_models(cfg, tmp_path / "r", False, torch.device("cpu"))
    assert next(teacher.model.parameters()).dtype == torch.bfloat16
    assert next(student.model.parameters()).dtype == torch.float32
    from divcfg.errors import UserError
    with pytest.raises(UserError, match="teacher-dtype"):
        cfg_for(tiny_data_dir, base_ckpt, tmp_path / "r", teacher_dtype="bf16").validate()


def test_hf_lora_teacher_adapter_folder_and_merge(tmp_path):
    from transformers import AutoModelForCausalLM
    from test_hf_cli import make_tiny_lm
    folder = make_tiny_lm(tmp_path / "lm")
    plugin = load_generator_any(f"hf:{folder}", max_len=12)
    for p in plugin.model.parameters():
        p.requires_grad_(False)
    cfg = types.SimpleNamespace(lora_r=2, lora_alpha=4.0, lora_dropout=0.0, lora_target_modules="")
    settings = lora.lora_settings(cfg, plugin)
    assert settings["target_modules"] == ["c_attn"]          # peft's default for GPT-2
    student, teacher = lora.make_lora_student(plugin, settings, f"hf:{folder}")
    with torch.no_grad():
        for n, p in student.lm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    base = load_generator_any(f"hf:{folder}", max_len=12)
    cond = base.encode_prompts(["a happy song"])
    x = torch.tensor([[base.model.cfg.bos_id, 5, 6, 7]])
    with torch.no_grad():
        assert torch.equal(teacher.model(x, cond), base.model(x, cond))
        s = student.model(x, cond)
    student.save(tmp_path / "ckpt", {"note": "hf lora"})
    assert (tmp_path / "ckpt" / "adapter_config.json").exists() and (tmp_path / "ckpt" / "divcfg.json").exists()
    merged = lora.merge_lora_checkpoint(tmp_path / "ckpt", tmp_path / "merged")
    lm = AutoModelForCausalLM.from_pretrained(str(merged))        # plain transformers loads it
    assert not any("lora" in k for k in lm.state_dict())
    again = load_generator_any(f"hf:{merged}", max_len=12)
    with torch.no_grad():
        assert torch.allclose(again.model(x, cond), s, atol=1e-4)
