"""The opt-in compiled decode step (``sample(..., compile=True)``, ``divcfg.models.fast_decode``)
against the eager one on a tiny random model: logits step by step (fp32, CFG's 2B batch, bf16
autocast), the same sampled tokens from the same seed in fp32, and its errors. Compiles three
graphs (batch 3 and 6 in fp32, batch 3 under bf16), about 10-20 s of CPU."""

import pytest
import torch

from divcfg.sampling import bf16_supported, sample


@pytest.fixture(scope="module")
def model(cond_model):
    return cond_model


def _cond(n, seed):
    return torch.randn(n, 384, generator=torch.Generator().manual_seed(seed))


def _step_logits(model, cache, cond, null_mask, steps, seed):
    """Logits of the prefill and ``steps`` decode steps fed the same random tokens."""
    g = torch.Generator().manual_seed(seed)
    B = cond.shape[0]
    out = [model.forward_step(torch.full((B, 1), model.cfg.bos_id), cache, cond, null_mask)]
    for _ in range(steps):
        out.append(model.forward_step(torch.randint(3, model.cfg.vocab_size, (B, 1), generator=g), cache))
    return torch.stack(out).float()


@pytest.mark.parametrize("cfg_batch", [False, True])
@torch.no_grad()
def test_compiled_step_matches_eager_fp32(model, cfg_batch):
    cond, null = _cond(3, 0), None
    if cfg_batch:  # CFG's one batch of 2B rows: conditional rows, then null-prefix rows
        cond, null = torch.cat([cond, cond]), torch.arange(6) >= 3
    B = cond.shape[0]
    eager = _step_logits(model, model.new_cache(B), cond, null, 20, 1)
    compiled_cache = model.new_compiled_cache(B)
    compiled = _step_logits(model, compiled_cache, cond, null, 20, 1)
    assert compiled_cache.decoder is not None and compiled_cache.pos == eager.shape[0] + model.cfg.n_prefix
    assert torch.allclose(compiled, eager, atol=1e-5, rtol=0)


@pytest.mark.skipif(not bf16_supported("cpu"), reason="no native bf16 on this CPU")
@torch.no_grad()
def test_compiled_step_matches_eager_under_bf16_autocast(model):
    cond, bf = _cond(3, 2), torch.bfloat16
    with torch.autocast("cpu", dtype=bf):
        eager = _step_logits(model, model.new_cache(3, bf), cond, None, 20, 3)
        compiled = _step_logits(model, model.new_compiled_cache(3, bf, bf),
                                cond, None, 20, 3)
    # bf16 logits (|logit| < 1 here): a few units of bf16 rounding (2^-8 relative)
    assert (compiled - eager).abs().max() <= 1e-2
    assert (compiled - eager).abs().mean() <= 1e-3


@pytest.mark.parametrize("kw", [dict(gamma=1.0), dict(gamma=2.0, temperature=0.8, top_k=10, min_new_tokens=5)])
def test_compiled_sampling_draws_the_same_tokens_fp32(model, kw):
    cond = _cond(3, 4)
    for seed in (0,):
        eager = sample(model, cond, max_new_tokens=30, generator=torch.Generator().manual_seed(seed), **kw)
        comp = sample(model, cond, max_new_tokens=30, generator=torch.Generator().manual_seed(seed), compile=True,
                      **kw)
        assert torch.equal(comp.tokens, eager.tokens)
        assert torch.equal(comp.lengths, eager.lengths) and torch.equal(comp.finished, eager.finished)
        assert torch.allclose(comp.logprobs, eager.logprobs, atol=1e-5)


@torch.no_grad()
def test_compiled_cache_full_is_an_error(model):
    cache = model.new_compiled_cache(3)
    model.forward_step(torch.full((3, 1), model.cfg.bos_id), cache, _cond(3, 5))
    for _ in range(model.cfg.max_len - 1):
        model.forward_step(torch.full((3, 1), 5), cache)
    with pytest.raises(ValueError, match="KV cache full"):
        model.forward_step(torch.full((3, 1), 5), cache)


def test_compile_needs_a_cache_and_a_model_that_has_it(model):
    with pytest.raises(ValueError, match="use_cache"):
        sample(model, _cond(2, 6), max_new_tokens=3, compile=True, use_cache=False)

    class NoCompiled(torch.nn.Module):
        cfg = model.cfg

    with pytest.raises(ValueError, match="no compiled decoding"):
        sample(NoCompiled(), _cond(2, 6), max_new_tokens=3, compile=True)


def test_default_caches_use_the_eager_step(model):
    assert model.new_cache(2).decoder is None


def test_a_missing_cxx_compiler_is_one_clear_error(monkeypatch):
    """Inductor's CPU backend needs a C++ compiler: without one, compile=True stops with one UserError
    naming the fix, not dynamo's traceback (a one-layer model: a graph no other test compiled)."""
    import torch._inductor.config as inductor_config

    from divcfg.errors import UserError
    from divcfg.models.transformer import ModelConfig, MusicTransformer
    monkeypatch.setattr(inductor_config, "fx_graph_cache", False)
    monkeypatch.setattr(inductor_config.cpp, "cxx", ("/nonexistent/g++",))
    torch.manual_seed(0)
    m = MusicTransformer(ModelConfig(vocab_size=30, n_layer=1, n_head=2, d_model=16, n_prefix=2, max_len=20,
                                     dropout=0.0)).eval()
    try:
        with pytest.raises(UserError, match="C\\+\\+ compiler") as err:
            sample(m, torch.randn(2, 384), max_new_tokens=5, compile=True)
        assert "\n" not in str(err.value) and "g++" in str(err.value)
    finally:
        torch._dynamo.reset()
