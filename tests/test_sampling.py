"""The fast sampler against the sampler and decode step it replaced (kept verbatim in
``benchmarks/reference_sampler.py``), the one-query decode step against full recomputation (fp32
and bf16 autocast), the early-exit logic, and the device/precision choice (tiny random models)."""

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from divcfg import sampling
from divcfg.guidance import cfg_logits, cfg_logprobs, guided_sequence_logprobs
from divcfg.models.transformer import ModelConfig, MusicTransformer
from divcfg.sampling import Precision, bf16_supported, choose_precision, device_generator, sample

_spec = importlib.util.spec_from_file_location(
    "reference_sampler", Path(__file__).resolve().parent.parent / "benchmarks" / "reference_sampler.py")
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)


@pytest.fixture(scope="module")
def model(cond_model):
    return cond_model


@pytest.fixture(scope="module")
def eos_prone(model):
    """The same model with EOS made likelier: rows finish at different steps, mostly within 47."""
    m = MusicTransformer(model.cfg)
    m.load_state_dict(model.state_dict())
    with torch.no_grad():
        m.ln_f.bias.copy_(m.tok_emb.weight[m.cfg.eos_id] * 100.0)
    return m.eval()


def _cond(n, seed):
    return torch.randn(n, 384, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kw", [
    dict(gamma=1.0),
    dict(gamma=3.0, cfg_mode="batched"),
    dict(gamma=3.0, cfg_mode="two_pass"),
    dict(gamma=2.0, temperature=0.7, min_new_tokens=5),
    dict(gamma=1.0, top_k=5, temperature=1.3),
    # (at τ=1 the old sampler measured top-p mass before renormalising away PAD/BOS; the new one
    # after, as it always did at τ≠1 and as the module docstring states: compared at τ≠1)
    dict(gamma=2.0, top_p=0.8, temperature=0.9),
    dict(gamma=2.0, use_cache=False),
])
def test_fast_sampler_keeps_the_random_stream_of_the_reference(eos_prone, kw):
    """fp32: same seed → the same tokens, lengths and flags as the pre-change sampler, and the
    same log-probs up to float rounding (a reordered but equal distribution at every step)."""
    cond = _cond(6, 1)
    for seed in (0, 1):
        new = sample(eos_prone, cond, max_new_tokens=30, generator=torch.Generator().manual_seed(seed), **kw)
        ref = reference.reference_sample(eos_prone, cond, max_new_tokens=30,
                                         generator=torch.Generator().manual_seed(seed), **kw)
        assert torch.equal(new.tokens, ref.tokens)
        assert torch.equal(new.lengths, ref.lengths) and torch.equal(new.finished, ref.finished)
        assert torch.allclose(new.logprobs, ref.logprobs, atol=1e-5)
        assert new.forward_passes_per_token == ref.forward_passes_per_token


def test_the_reference_finishes_rows_early(eos_prone):
    """The stream test above is meaningful: rows end at different steps, some before the limit."""
    out = reference.reference_sample(eos_prone, _cond(6, 1), max_new_tokens=30,
                                     generator=torch.Generator().manual_seed(0))
    assert out.finished.any() and len(set(out.lengths.tolist())) > 2


def test_decode_step_equals_reference_step_and_full_forward(model):
    """The one-query decode path (matmul attention, no sequence axis) against the generic cache
    path it bypasses (fused SDPA on a length-1 sequence) and against recomputation, in fp32."""
    torch.manual_seed(2)
    cond = torch.randn(3, 384)
    toks = torch.randint(3, 40, (3, 20))
    toks[:, 0] = model.cfg.bos_id
    with torch.no_grad():
        full = model(toks, cond)
        fast, slow = model.new_cache(3), reference.reference_new_cache(model, 3)
        model.forward_step(toks[:, :2], fast, cond)
        reference.reference_forward_step(model, toks[:, :2], slow, cond)
        for t in range(2, 20):
            a = model.forward_step(toks[:, t:t + 1], fast, cond)
            b = reference.reference_forward_step(model, toks[:, t:t + 1], slow, cond)
            assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a, full[:, t], atol=1e-5)
        assert fast.pos == slow.pos == model.cfg.n_prefix + 20


def test_decode_step_under_bf16_autocast_tracks_full_forward(model):
    """bf16 cache + bf16 matmuls: the incremental logits stay within bf16 rounding of the
    teacher-forced ones (the same autocast), and the cache really is bf16."""
    torch.manual_seed(3)
    cond = torch.randn(4, 384)
    toks = torch.randint(3, 40, (4, 24))
    toks[:, 0] = model.cfg.bos_id
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        full = model(toks, cond).float()
        cache = model.new_cache(4, torch.bfloat16)
        steps = [model.forward_step(toks[:, :1], cache, cond)]
        steps += [model.forward_step(toks[:, t:t + 1], cache, cond) for t in range(1, 24)]
    assert cache.k[0].dtype == torch.bfloat16
    inc = torch.stack(steps, 1).float()
    scale = full.abs().max()
    assert (inc - full).abs().max() < 0.03 * scale
    # and the distributions agree: small KL between the two per position
    kl = (F.log_softmax(full, -1).exp() * (F.log_softmax(full, -1) - F.log_softmax(inc, -1))).sum(-1)
    assert kl.max() < 1e-2


def test_cache_full_is_an_error(model):
    cache = model.new_cache(1)
    tok = torch.full((1, 1), model.cfg.bos_id)
    with torch.no_grad():
        model.forward_step(tok, cache, None)
        for _ in range(model.cfg.max_len - 1):
            model.forward_step(tok, cache)
        with pytest.raises(ValueError, match="KV cache full"):
            model.forward_step(tok, cache)


def test_cfg_logits_give_the_cfg_distribution():
    torch.manual_seed(4)
    lc, lu = torch.randn(5, 30) * 4, torch.randn(5, 30) * 4 + 3.0
    for gamma in (0.0, 1.0, 2.5, 7.0):
        assert torch.allclose(F.log_softmax(cfg_logits(lc, lu, gamma), -1), cfg_logprobs(lc, lu, gamma), atol=1e-5)
    lc16 = lc.bfloat16()
    assert cfg_logits(lc16, lu.bfloat16(), 2.0).dtype == torch.float32


def test_sampler_logprobs_match_teacher_forcing_under_bf16(model):
    """bf16 sampling draws from the guided distribution that the teacher-forced pass computes
    (after removing PAD/BOS), up to bf16 rounding."""
    cond = _cond(4, 5)
    out = sample(model, cond, max_new_tokens=20, gamma=2.0, autocast=True, generator=torch.Generator().manual_seed(3))
    x = out.with_bos(model.cfg.bos_id)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16_supported("cpu")):
        lp = guided_sequence_logprobs(model, x[:, :-1], cond, 2.0)
    lp[..., [model.cfg.pad_id, model.cfg.bos_id]] = float("-inf")
    lp = F.log_softmax(lp, -1).gather(-1, out.tokens.unsqueeze(-1)).squeeze(-1)
    live = out.tokens != model.cfg.pad_id
    assert torch.allclose(lp[live], out.logprobs[live], atol=0.1)


def test_checking_every_k_steps_gives_the_same_output(eos_prone, monkeypatch):
    """The accelerator's early exit (every SYNC_EVERY steps) returns exactly what checking
    every step returns: the output is cut to the longest row either way."""
    cond = _cond(5, 6)
    kw = dict(max_new_tokens=47, gamma=2.0, generator=None)
    each = sample(eos_prone, cond, **{**kw, "generator": torch.Generator().manual_seed(2)})
    monkeypatch.setitem(sampling.CHECK_EVERY, "cpu", 16)
    sparse = sample(eos_prone, cond, **{**kw, "generator": torch.Generator().manual_seed(2)})
    assert each.finished.all() and each.tokens.shape[1] < 47  # the early exit did happen
    assert each.tokens.shape[1] % 16 != 0                       # ... between two sparse checks
    for a, b in zip((each.tokens, each.lengths, each.logprobs, each.finished),
                    (sparse.tokens, sparse.lengths, sparse.logprobs, sparse.finished)):
        assert torch.equal(a, b)


def test_empty_batch_and_zero_tokens(model):
    out = sample(model, torch.zeros(0, 384), max_new_tokens=5)
    assert out.tokens.shape == (0, 0) and out.lengths.shape == (0,)
    out = sample(model, _cond(2, 7), max_new_tokens=0)
    assert out.tokens.shape == (2, 0) and out.lengths.tolist() == [0, 0] and not out.finished.any()


def test_choose_precision_is_device_aware():
    bf16 = Precision(torch.bfloat16, torch.bfloat16)
    off = Precision(None, None)
    assert choose_precision("cpu", True, True) == bf16
    assert choose_precision("cpu", True, False) == off        # asked, but the CPU has no bf16
    assert choose_precision("cpu", False, True) == off        # not asked
    assert choose_precision("cuda", True, True) == bf16       # an Ampere-or-newer GPU
    assert choose_precision("cuda", True, False) == off       # e.g. a V100: fp32
    assert choose_precision("mps", True, True) == off         # not a device this sampler tunes for


def test_bf16_supported_answers_for_each_device():
    assert isinstance(bf16_supported("cpu"), bool)
    assert bf16_supported("cuda") == (torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    assert bf16_supported("xla") is False


def test_device_generator_keeps_a_generator_on_its_device():
    g = torch.Generator().manual_seed(0)
    assert device_generator(g, torch.device("cpu")) is g
    assert device_generator(None, torch.device("cpu")) is None


def test_autocast_request_without_bf16_support_samples_in_fp32(model, monkeypatch):
    """autocast=True on a CPU without bf16 falls back to the fp32 result, token for token."""
    monkeypatch.setattr(sampling, "bf16_supported", lambda device_type="cpu": False)
    cond = _cond(3, 8)
    a = sample(model, cond, max_new_tokens=12, autocast=True, generator=torch.Generator().manual_seed(0))
    b = sample(model, cond, max_new_tokens=12, autocast=False, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.logprobs, b.logprobs)


def test_decode_linears_make_autocasts_casts_explicitly():
    """The decode step's explicit bf16 casts (weights cast once per cache) are bit-identical to
    what autocast computes for the same nn.Linear."""
    from divcfg.models.transformer import KVCache, _linear
    torch.manual_seed(9)
    lin = torch.nn.Linear(32, 48)
    x = torch.randn(5, 32)
    cache = KVCache([], [])
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ref = lin(x)
        assert torch.equal(_linear(lin, x, torch.bfloat16, cache), ref)
        assert torch.equal(_linear(lin, x, torch.bfloat16, cache), ref)  # from the cached copy
        assert torch.equal(_linear(lin, x, None, cache), lin(x))
    assert len(cache.weights) == 1
