"""The shipped checkpoints: packing to bf16 with a sha256 manifest, verification before install,
a damaged file refused in one line, and an installed base that loads and matches its source."""

from __future__ import annotations

import json

import pytest
import torch

from divcfg import pretrained
from divcfg.checkpoint import save_checkpoint
from divcfg.errors import UserError
from divcfg.models.generator import load_generator, save_generator
from divcfg.models.transformer import ModelConfig, MusicTransformer


@pytest.fixture()
def packed(tmp_path):
    """A run root with a tiny real base and two judge-like checkpoints, packed into ``shipped/``."""
    torch.manual_seed(0)
    run = tmp_path / "run"
    tok = tmp_path / "tokenizer.json"
    tok.write_text(json.dumps({"vocab": 40}))
    base = MusicTransformer(ModelConfig(vocab_size=40, n_layer=1, n_head=2, d_model=16, n_prefix=1, max_len=32))
    save_generator(run / "base" / "checkpoint", base, {"provenance": {"seed": 0}}, tok)
    for comp in ("embedder", "scorer"):
        save_checkpoint(run / comp, {"w": torch.randn(4, 4), "steps": torch.arange(3)},
                        {"kind": comp, "provenance": {"seed": 1}}, extra_files={"tokenizer.json": tok})
    out = tmp_path / "shipped"
    man = pretrained.pack(run, out, commands={"base": "divcfg pretrain ..."})
    return run, out, man, base


def test_pack_writes_bf16_and_a_manifest_of_every_file(packed):
    run, out, man, _ = packed
    from safetensors.torch import load_file
    assert set(man["files"]) == {f"{c}/{n}" for c in pretrained.COMPONENTS
                                 for n in ("model.safetensors", "config.json", "tokenizer.json")}
    state = load_file(str(out / "embedder" / "model.safetensors"))
    assert state["w"].dtype == torch.bfloat16 and state["steps"].dtype == torch.int64   # integers untouched
    assert man["commands"]["base"].startswith("divcfg pretrain")
    assert man["trained_with"]["embedder"] == {"seed": 1}
    assert pretrained.verify(out)["files"] == man["files"]


def test_installed_base_loads_and_equals_its_source_in_bf16(packed, tmp_path):
    _, out, _, base = packed
    dest = pretrained.install(tmp_path / "demo" / "base" / "checkpoint", "base", root=out)
    model, _ = load_generator(dest.parent)
    for (name, p), (_, q) in zip(sorted(base.state_dict().items()), sorted(model.state_dict().items())):
        assert q.dtype == torch.float32
        assert torch.equal(q, p.to(torch.bfloat16).float()), name


@pytest.mark.parametrize("damage", ["flip", "missing"])
def test_a_damaged_shipped_file_is_refused_in_one_line(packed, tmp_path, damage):
    _, out, _, _ = packed
    f = out / "scorer" / "model.safetensors"
    if damage == "flip":
        data = bytearray(f.read_bytes())
        data[-1] ^= 1
        f.write_bytes(bytes(data))
    else:
        f.unlink()
    with pytest.raises(UserError) as e:
        pretrained.install(tmp_path / "x", "base", root=out)   # any component: the whole set is checked
    assert "\n" not in str(e.value) and "--from-scratch" in str(e.value)
    assert not (tmp_path / "x").exists()


def test_the_repository_weights_match_their_manifest():
    """The checkpoints shipped in divcfg/weights are the ones the manifest names, byte for byte."""
    man = pretrained.verify()
    assert set(man["files"]) >= {f"{c}/model.safetensors" for c in pretrained.COMPONENTS}
    assert all(man["commands"].get(c) for c in pretrained.COMPONENTS)


def test_a_demo_folder_made_with_other_shipped_checkpoints_is_refused(tmp_path):
    """Cached γ-sweep/student/evaluation stages are reused only with the shipped files they were
    made with; a folder from other files (or from before they were recorded) is refused in one line."""
    from divcfg.demo import _check_same_shipped
    files = pretrained.manifest()["files"]
    fresh = {"stages": {"data": {}, "pretrain": {"shipped": True}}}
    _check_same_shipped(fresh, tmp_path)                          # nothing later yet: recorded, accepted
    assert fresh["shipped_files"] == files
    same = {"stages": {"gamma": {}, "finetune_beta0": {}}, "shipped_files": dict(files)}
    _check_same_shipped(same, tmp_path)                           # made with these files: accepted
    for record in ({"stages": {"gamma": {}}, "shipped_files": {**files, "base/model.safetensors": "0" * 64}},
                   {"stages": {"gamma": {}, "evaluate": {}}}):    # other files; files never recorded
        with pytest.raises(UserError) as e:
            _check_same_shipped(record, tmp_path)
        assert "\n" not in str(e.value) and "--root" in str(e.value) and str(tmp_path) in str(e.value)
