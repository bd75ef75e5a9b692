"""The Hugging Face causal-LM adapter (``divcfg.models.hf_causal_lm``) on tiny random GPT-2 models:
padding and KV cache against full recomputation and against the raw model, the sampler in both
CFG modes, CFG against transformers' own processor, reverse-KL distillation, offline tokenizers."""

import copy

import pytest
import torch
import torch.nn.functional as F

import transformers  # installed by the set-up: its absence fails, not skips
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402
from transformers.generation.logits_process import UnbatchedClassifierFreeGuidanceLogitsProcessor  # noqa: E402

from divcfg.errors import UserError  # noqa: E402
from divcfg.guidance import guided_sequence_logprobs  # noqa: E402
from divcfg.models.hf_causal_lm import HFCausalLMGenerator, encode_prompts  # noqa: E402
from divcfg.objectives import distillation_loss  # noqa: E402
from divcfg.sampling import sample  # noqa: E402

PAD, BOS, EOS, NULL = 0, 1, 2, 3
V = 40


def tiny_gpt2(seed: int = 0, vocab: int = V) -> GPT2LMHeadModel:
    """2 layers, d=32. A large init (0.3) makes the random model peaked and prompt-dependent,
    so CFG changes the distribution noticeably."""
    torch.manual_seed(seed)
    conf = GPT2Config(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=2, n_head=2, initializer_range=0.3,
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                      bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
    return GPT2LMHeadModel(conf).eval()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def gen():
    return HFCausalLMGenerator(tiny_gpt2(), null_prompt_ids=[NULL], bos_id=BOS, eos_id=EOS, pad_id=PAD,
                               max_len=24).eval()


# prompts of lengths 2, 5, 1, 0 (empty), 3: left-padded with PAD
COND = torch.tensor([[PAD, PAD, PAD, 5, 6],
                     [7, 8, 9, 10, 11],
                     [PAD, PAD, PAD, PAD, 12],
                     [PAD, PAD, PAD, PAD, PAD],
                     [PAD, PAD, 13, 14, 15]])


def prompt_of(row: torch.Tensor) -> list[int]:
    ids = row.tolist()
    while ids and ids[0] == PAD:
        ids.pop(0)
    return ids


def test_padding_matches_each_row_alone_and_the_raw_model(gen):
    torch.manual_seed(1)
    B = COND.shape[0]
    null = torch.tensor([False, True, False, False, True])
    tokens = torch.cat([torch.full((B, 1), BOS), torch.randint(4, V, (B, 9))], dim=1)
    with torch.no_grad():
        batch = gen(tokens, COND, null)
        for i in range(B):
            prompt = [NULL] if null[i] else prompt_of(COND[i])
            raw = gen.lm(torch.tensor([prompt + tokens[i].tolist()])).logits[:, len(prompt):]
            assert torch.allclose(batch[i:i + 1], raw, atol=1e-5), i
        # cond=None is the null prompt for every row; a null row ignores its cond
        assert torch.allclose(gen(tokens, None), gen(tokens, COND, torch.ones(B, dtype=torch.bool)), atol=1e-5)
        assert not torch.allclose(gen(tokens, None)[0], batch[0], atol=1e-2)  # the prompt matters


def test_forward_step_equals_full_recomputation(gen):
    torch.manual_seed(2)
    B = COND.shape[0]
    tokens = torch.cat([torch.full((B, 1), BOS), torch.randint(4, V, (B, 10))], dim=1)
    cond2 = torch.cat([COND, COND])                       # a CFG batch: cond rows then null rows
    null = torch.cat([torch.zeros(B, dtype=torch.bool), torch.ones(B, dtype=torch.bool)])
    tok2 = torch.cat([tokens, tokens])
    with torch.no_grad():
        full = gen(tok2, cond2, null)
        cache = gen.new_cache(2 * B)
        steps = [gen.forward_step(tok2[:, :3], cache, cond2, null)]  # prefill of 3 tokens
        for t in range(3, tok2.shape[1]):
            steps.append(gen.forward_step(tok2[:, t:t + 1], cache, cond2, null))
    inc = torch.stack(steps, dim=1)
    assert torch.allclose(inc, full[:, 2:], atol=1e-4), (inc - full[:, 2:]).abs().max()
    assert (full[:B] - full[B:]).abs().max() > 0.1                    # cond and null rows differ


def test_sampler_modes_agree_and_cache_matches_recomputation(gen):
    cond = COND.repeat_interleave(2, dim=0)
    for gamma in (1.0, 3.0):
        outs = {}
        for mode in ("batched", "two_pass"):
            for use_cache in (True, False):
                outs[mode, use_cache] = sample(gen, cond, max_new_tokens=12, gamma=gamma, cfg_mode=mode,
                                               use_cache=use_cache, generator=torch.Generator().manual_seed(7))
        ref = outs["batched", True]
        assert ref.forward_passes_per_token == (1 if gamma == 1.0 else 2)
        for key, o in outs.items():
            assert torch.equal(o.tokens, ref.tokens), (gamma, key)
            assert torch.allclose(o.logprobs, ref.logprobs, atol=1e-4), (gamma, key)
        L = ref.tokens.shape[1]
        gen_mask = torch.arange(L) < ref.lengths.unsqueeze(1)
        assert not torch.isin(ref.tokens[gen_mask], torch.tensor([PAD, BOS])).any()
        assert (ref.tokens[~gen_mask] == PAD).all()
        assert ref.lengths.min() >= 1
    # guidance changes what is sampled
    g1 = sample(gen, cond, max_new_tokens=12, gamma=1.0, generator=torch.Generator().manual_seed(7))
    g3 = sample(gen, cond, max_new_tokens=12, gamma=3.0, generator=torch.Generator().manual_seed(7))
    assert not torch.equal(g1.tokens, g3.tokens)


def test_cfg_matches_transformers_unbatched_processor(gen):
    """Per prompt, transformers' processor (its own cached unconditional pass over
    ``[∅, BOS, y…]``, scores from the raw model) after log_softmax equals the adapter's guided
    log-probs computed in one left-padded batch."""
    gamma = 3.0
    torch.manual_seed(3)
    B, T = COND.shape[0], 8
    tokens = torch.cat([torch.full((B, 1), BOS), torch.randint(4, V, (B, T - 1))], dim=1)
    with torch.no_grad():
        ours = guided_sequence_logprobs(gen, tokens, COND, gamma, "batched")
        ours_two_pass = guided_sequence_logprobs(gen, tokens, COND, gamma, "two_pass")
        assert torch.allclose(ours, ours_two_pass, atol=1e-5)
        for i in range(B):
            prompt = torch.tensor([prompt_of(COND[i])], dtype=torch.long)
            proc = UnbatchedClassifierFreeGuidanceLogitsProcessor(
                gamma, gen.lm, unconditional_ids=torch.tensor([[NULL, BOS]]), use_cache=True)
            for t in range(T):
                input_ids = torch.cat([prompt, tokens[i:i + 1, :t + 1]], dim=1)
                scores = gen.lm(input_ids).logits[:, -1]
                ref = F.log_softmax(proc(input_ids, scores), dim=-1)
                assert torch.allclose(ours[i, t], ref[0], atol=1e-4), (i, t, (ours[i, t] - ref[0]).abs().max())
    # and guidance is not a no-op here
    assert (ours - guided_sequence_logprobs(gen, tokens, COND, 1.0)).abs().max() > 0.1


def test_reverse_kl_distillation_toward_cfg_teacher_reduces_kl():
    student = HFCausalLMGenerator(tiny_gpt2(seed=4), null_prompt_ids=[NULL], bos_id=BOS, eos_id=EOS,
                                  pad_id=PAD, max_len=24)
    teacher = copy.deepcopy(student).eval().requires_grad_(False)
    cond = COND.repeat_interleave(2, dim=0)
    gamma = 3.0

    def on_policy_kl(generator, grad: bool):
        out = sample(student, cond, max_new_tokens=12, gamma=1.0, generator=generator)  # no grad
        x = out.with_bos(BOS)[:, :-1]                                   # [BOS, y_1..y_{L-1}]
        mask = torch.arange(out.tokens.shape[1]).unsqueeze(0) < out.lengths.unsqueeze(1)
        with torch.no_grad():
            teacher_lp = guided_sequence_logprobs(teacher, x, cond, gamma)
        with torch.set_grad_enabled(grad):
            student_lp = F.log_softmax(student(x, cond), dim=-1)
        return distillation_loss(student_lp, teacher_lp, mask, "reverse_kl")

    def held_out_kl():  # mean over 3 fixed sampling seeds
        return sum(float(on_policy_kl(torch.Generator().manual_seed(100 + s), False)) for s in range(3)) / 3

    before = held_out_kl()
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)
    gen_train = torch.Generator().manual_seed(0)
    student.train()
    for _ in range(25):
        loss = on_policy_kl(gen_train, True)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = held_out_kl()
    assert before > 0.5                      # γ=3 is far from the base here
    assert after < 0.75 * before, (before, after)
    # the teacher is frozen and untouched
    assert all(not p.requires_grad for p in teacher.parameters())


def test_encode_prompts_and_from_tokenizer_with_an_offline_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[PAD]", "[BOS]", "[EOS]", "[UNK]", "an", "irish", "jig", "in", "d", "major", "a", "reel",
             "slow", "air", "minor", "6/8"]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]",
                                  unk_token="[UNK]")
    cond = encode_prompts(tok, ["an irish jig in d major", "a reel", "", "slow air in e minor"])
    assert cond.tolist() == [[4, 5, 6, 7, 8, 9],
                             [0, 0, 0, 0, 10, 11],
                             [0, 0, 0, 0, 0, 0],
                             [0, 12, 13, 7, 3, 14]]
    assert encode_prompts(tok, ["an irish jig"], max_length=2).tolist() == [[5, 6]]

    g = HFCausalLMGenerator.from_tokenizer(tiny_gpt2(seed=5, vocab=len(words)), tok, max_len=16, null_prompt="a")
    assert (g.cfg.bos_id, g.cfg.eos_id, g.cfg.pad_id, g.cfg.null_prompt_ids) == (1, 2, 0, [10])
    out = sample(g, cond, max_new_tokens=8, gamma=2.0, cfg_mode="two_pass", generator=torch.Generator().manual_seed(0))
    assert out.tokens.shape[0] == 4 and len(out.sequences()) == 4
    assert all(isinstance(s, str) for s in tok.batch_decode(out.sequences()))


def test_user_errors():
    lm = tiny_gpt2()
    with pytest.raises(UserError, match="must differ"):
        HFCausalLMGenerator(lm, null_prompt_ids=[], bos_id=EOS, eos_id=EOS, pad_id=PAD, max_len=8)
    with pytest.raises(UserError, match="not a token id"):
        HFCausalLMGenerator(lm, null_prompt_ids=[], bos_id=BOS, eos_id=EOS, pad_id=V, max_len=8)
    g = HFCausalLMGenerator(lm, null_prompt_ids=[], bos_id=BOS, eos_id=EOS, pad_id=PAD, max_len=4)
    with pytest.raises(ValueError, match="max_len"):
        g(torch.full((1, 5), BOS), COND[:1])
    cache = g.new_cache(1)
    g.forward_step(torch.full((1, 4), BOS), cache, COND[:1])
    with pytest.raises(ValueError, match="cache full"):
        g.forward_step(torch.full((1, 1), BOS), cache, COND[:1])
