"""Weight merging: LERP endpoints and midpoint, refusal of mismatched checkpoints, the λ sweep."""

import json

import pytest
import torch

from divcfg.cli import main as cli_main
from divcfg.errors import UserError
from divcfg.merging import iter_merges, lerp_state_dicts, merge_checkpoints
from divcfg.models.generator import load_generator, save_generator, state_dict_for_saving
from divcfg.models.transformer import ModelConfig, MusicTransformer
from divcfg.music.tokenizer import make_tokenizer, save_tokenizer, special_ids


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    tok = make_tokenizer()
    return save_tokenizer(tok, d), len(tok), special_ids(tok)


def _model_cfg(vocab, ids, **kw):
    base = dict(vocab_size=vocab, n_layer=1, n_head=2, d_model=16, n_prefix=1, max_len=24, dropout=0.0,
                pad_id=ids["pad"], bos_id=ids["bos"], eos_id=ids["eos"])
    return ModelConfig(**{**base, **kw})


def _checkpoint(path, tokenizer_file, seed, tokfile=None, **kw):
    tok_path, vocab, ids = tokenizer_file
    torch.manual_seed(seed)
    model = MusicTransformer(_model_cfg(vocab, ids, **kw))
    save_generator(path, model, {"finetune": {"beta": seed}}, tokfile or tok_path)
    return path


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tokenizer_file):
    d = tmp_path_factory.mktemp("ckpts")
    return _checkpoint(d / "a", tokenizer_file, 0), _checkpoint(d / "b", tokenizer_file, 1)


def _state(path):
    model, _ = load_generator(path)
    return state_dict_for_saving(model)


def test_lerp_endpoints_exact_and_midpoint_is_mean(pair, tmp_path):
    a, b = _state(pair[0]), _state(pair[1])
    assert any(not torch.equal(a[k], b[k]) for k in a)
    for lam, want in ((0.0, a), (1.0, b)):
        merged = lerp_state_dicts(a, b, lam)
        assert all(torch.equal(merged[k], want[k]) for k in a)
    mid = lerp_state_dicts(a, b, 0.5)
    for k in a:
        assert torch.allclose(mid[k], (a[k] + b[k]) / 2, atol=1e-7, rtol=0)
    quarter = lerp_state_dicts(a, b, 0.25)
    k = "tok_emb.weight"
    assert torch.allclose(quarter[k], 0.75 * a[k] + 0.25 * b[k], atol=1e-7, rtol=0)


def test_merge_checkpoint_roundtrip_and_record(pair, tmp_path):
    out = merge_checkpoints(pair[0], pair[1], 0.0, tmp_path / "m0")
    assert all(torch.equal(x, y) for x, y in zip(_state(out).values(), _state(pair[0]).values()))
    rc = cli_main(["merge", str(pair[0]), str(pair[1]), "--lam", "1", "--out", str(tmp_path / "m1")])
    assert rc == 0
    assert all(torch.equal(x, y) for x, y in zip(_state(tmp_path / "m1").values(), _state(pair[1]).values()))
    out = merge_checkpoints(pair[0], pair[1], 0.5, tmp_path / "mh")
    a, b, m = _state(pair[0]), _state(pair[1]), _state(out)
    assert all(torch.allclose(m[k], (a[k] + b[k]) / 2, atol=1e-7, rtol=0) for k in a)
    config = json.loads((out / "config.json").read_text())
    assert config["kind"] == "generator"
    assert config["merge"]["lam"] == 0.5 and config["merge"]["a"].endswith("a") and config["merge"]["b"].endswith("b")
    assert config["parents"]["b"]["finetune"]["beta"] == 1
    assert (out / "tokenizer.json").read_bytes() == (pair[0] / "tokenizer.json").read_bytes()
    # the merged model loads like any generator and keeps its tied head
    model, _ = load_generator(out)
    assert model.head.weight.data_ptr() == model.tok_emb.weight.data_ptr()


def test_iter_merges_matches_written_merges(pair, tmp_path):
    lams = [0.0, 0.3, 1.0]
    x = torch.randint(3, 50, (2, 6))
    cond = torch.randn(2, 384)
    seen = []
    for lam, model, config in iter_merges(pair[0], pair[1], lams):
        ref, _ = load_generator(merge_checkpoints(pair[0], pair[1], lam, tmp_path / f"m{lam}"))
        with torch.no_grad():
            assert torch.allclose(model(x, cond), ref(x, cond), atol=1e-6)
        assert config["merge"]["lam"] == lam
        seen.append(lam)
    assert seen == lams


def test_mismatched_checkpoints_are_refused(pair, tokenizer_file, tmp_path):
    wide = _checkpoint(tmp_path / "wide", tokenizer_file, 2, d_model=32)
    with pytest.raises(UserError, match="different architectures"):
        merge_checkpoints(pair[0], wide, 0.5, tmp_path / "x")
    other_tok = tmp_path / "tok.json"
    data = json.loads(tokenizer_file[0].read_text())
    data["config"]["pitch_range"] = [22, 109]
    other_tok.write_text(json.dumps(data))
    vocab_changed = _checkpoint(tmp_path / "tok", tokenizer_file, 3, tokfile=other_tok)
    with pytest.raises(UserError, match="tokenizers"):
        merge_checkpoints(pair[0], vocab_changed, 0.5, tmp_path / "y")
    with pytest.raises(UserError, match=r"\[0, 1\]"):
        merge_checkpoints(pair[0], pair[1], 1.5, tmp_path / "z")
    with pytest.raises(UserError, match="overwrite"):
        merge_checkpoints(pair[0], pair[1], 0.5, pair[0])
    with pytest.raises(UserError, match="shape"):
        a = _state(pair[0])
        b = dict(a, **{"tok_emb.weight": torch.zeros(3, 3)})
        lerp_state_dicts(a, b, 0.5)
    # CLI: one line, exit status 2
    assert cli_main(["merge", str(pair[0]), str(wide), "--lam", "0.5", "--out", str(tmp_path / "w")]) == 2
