"""The text domain and the plug-in layer without a training run: prompt files and their hash split,
the MiniLM judges, user judges loaded from ``module:function``, special tokens added to tokenizers
that lack them, and the layout rule that the core does not import the music package."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from divcfg.domains.text import TextDomain, distinct_2, read_prompt_file, split_of
from divcfg.errors import UserError
from divcfg.judges.base import CallableEmbedder, RewardScorer, load_callable

ROOT = Path(__file__).resolve().parent.parent


def test_prompt_files_and_the_hash_split(tmp_path):
    prompts = [f"prompt number {i}" for i in range(200)]
    txt = tmp_path / "p.txt"
    txt.write_text("\n".join(prompts[:100] + ["", "   ", prompts[0]]) + "\n")
    assert read_prompt_file(txt) == prompts[:100]            # blank lines and duplicates dropped
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text("\n".join(json.dumps({"prompt": p, "id": i}) for i, p in enumerate(prompts)) + "\n")
    small, big = TextDomain(txt), TextDomain(jsonl)
    # deterministic and stable when the file grows: a prompt keeps its split
    for p in prompts[:100]:
        assert p in small.by_split[split_of(p)] and p in big.by_split[split_of(p)]
    sizes = {s: len(v) for s, v in big.by_split.items()}
    assert sizes["train"] > 120 and 8 <= sizes["val"] <= 35 and 8 <= sizes["test"] <= 35, sizes
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no prompt field"}\n')
    with pytest.raises(UserError, match="'prompt' field"):
        read_prompt_file(bad)
    with pytest.raises(UserError, match="not found"):
        read_prompt_file(tmp_path / "missing.txt")
    one = tmp_path / "one.txt"
    one.write_text("a single prompt\n")
    with pytest.raises(UserError, match="empty"):
        TextDomain(one).split("test" if split_of("a single prompt") != "test" else "val")


def test_minilm_judges():
    from divcfg.judges.text import MiniLMDiversity, PromptSimilarityQuality
    E = MiniLMDiversity()
    emb, valid = E.embed_with_mask(["the sea at night", "the ocean in the dark", "tax forms for 2024", "  "])
    assert valid.tolist() == [True, True, True, False]
    assert torch.allclose(emb.norm(dim=1)[:3], torch.ones(3), atol=1e-5)
    d = 1 - emb[:3] @ emb[:3].T
    assert d[0, 1] < d[0, 2]                                # paraphrases are closer than unrelated text
    q = PromptSimilarityQuality().score(["a poem about the sea"] * 3, ["waves on the sea shore", "tax forms", ""])
    assert q[0] > q[1] and q[2] == -1.0
    assert distinct_2(["a b a b", "a b"]) == pytest.approx(2 / 4) and math.isnan(distinct_2(["one"]))


def test_user_judges_from_module_function(tmp_path, monkeypatch):
    (tmp_path / "judge_mod.py").write_text(textwrap.dedent('''
        def emb(completions):
            return [[len(c), 1.0] for c in completions]
        def reward(prompts, completions, **kw):
            return [1.0 if p in c else 0.0 for p, c in zip(prompts, completions)]
        NOT_CALLABLE = 3
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    E = CallableEmbedder(load_callable("judge_mod:emb", "--diversity-judge"))
    e, valid = E.embed_with_mask(["abc", "", "abcdef"])
    assert valid.tolist() == [True, False, True] and torch.allclose(e.norm(dim=1), torch.ones(3))
    Q = RewardScorer(load_callable("judge_mod:reward", "--quality-judge"))
    assert Q.score(["x", "y"], ["a x", "b"]).tolist() == [1.0, 0.0]
    for spec, msg in (("judge_mod", "module:function"), ("no_such_module:f", "cannot import"),
                      ("judge_mod:missing", "no 'missing'"), ("judge_mod:NOT_CALLABLE", "not callable")):
        with pytest.raises(UserError, match=msg):
            load_callable(spec, "--quality-judge")
    with pytest.raises(UserError, match="one float per completion"):
        RewardScorer(lambda p, c, **kw: [1.0]).score(["a", "b"], ["x", "y"])


def _tokenizer(specials: dict):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    words = ["<s>", "</s>", "[UNK]", "hello", "world"]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", **specials)


@pytest.mark.parametrize("specials, added", [
    ({"bos_token": "<s>", "eos_token": "</s>"}, ["pad"]),                   # Llama-like: no PAD
    ({"bos_token": "</s>", "eos_token": "</s>"}, ["bos", "pad"]),           # GPT-2-like: one id for both
    ({}, ["eos", "bos", "pad"]),                                            # nothing at all
    ({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "[UNK]"}, []),  # complete already
])
def test_missing_special_tokens_are_added(specials, added):
    from transformers import LlamaConfig, LlamaForCausalLM

    from divcfg.models.hf_plugin import ensure_special_tokens
    tok = _tokenizer(specials)
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32))
    assert ensure_special_tokens(tok, lm) == added
    ids = (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    assert len(set(ids)) == 3 and max(ids) < lm.get_input_embeddings().weight.shape[0]
    assert (lm.config.bos_token_id, lm.config.eos_token_id, lm.config.pad_token_id) == ids


def test_the_core_does_not_import_the_music_package():
    code = ("import sys; import divcfg.finetune, divcfg.evaluation, divcfg.merging, divcfg.sample, divcfg.rewards, "
            "divcfg.sampling, divcfg.guidance, divcfg.objectives, divcfg.models.base, divcfg.judges.text, "
            "divcfg.domains.base, divcfg.domains.text, divcfg.pretrain, divcfg.prompts, divcfg.listening.media; "
            "print([m for m in sys.modules if m.startswith(('divcfg.music', 'divcfg.domains.music', 'music21', "
            "'miditok'))])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
