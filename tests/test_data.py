"""`divcfg data`: the cache layout, deterministic disjoint splits, bad inputs, windows."""

from __future__ import annotations

import json
import os

import pytest

from divcfg.errors import UserError
from divcfg.music import corpus, dataset
from divcfg.music import tokenizer as tk

REQUIRED_META = ("key", "meter", "n_bars", "n_voices", "n_notes", "source_file")


def test_cache_layout_and_rows(tiny_data_dir):
    m = json.loads((tiny_data_dir / "manifest.json").read_text())
    tok = tk.load_tokenizer(tiny_data_dir)
    special = set(tk.special_ids(tok).values())
    total = 0
    for split in dataset.SPLITS:
        rows = dataset.load_split(tiny_data_dir, split)
        assert len(rows) == m["counts"][split]
        assert sum(len(r["tokens"]) for r in rows) == m["tokens"][split]
        total += len(rows)
        for r in rows:
            assert r["captions"] and all(isinstance(c, str) and c for c in r["captions"])
            assert all(k in r["meta"] for k in REQUIRED_META), r["meta"]
            assert 0 < len(r["tokens"]) <= m["config"]["max_tokens"]
            assert not set(r["tokens"]) & special
            assert max(r["tokens"]) < len(tok)
    assert total >= 150 and m["counts"]["train"] > m["counts"]["val"]
    assert sum(sum(v.values()) for v in m["counts_per_collection"].values()) == total
    assert {"essen", "oneills", "bach"} <= set(m["counts_per_collection"])
    assert m["provenance"]["git_commit"] and m["elapsed_s"]["total"] >= 0


def test_rows_decode_to_their_metadata(tiny_data_dir):
    tok = tk.load_tokenizer(tiny_data_dir)
    for r in dataset.load_split(tiny_data_dir, "train")[:40]:
        score = tk.tokens_to_score(tok, r["tokens"])
        assert score is not None
        assert sum(len(t.notes) for t in score.tracks) == r["meta"]["n_notes"]


def test_splits_disjoint_and_grouped_by_title(tiny_data_dir):
    ids, keys = {}, {}
    for split in dataset.SPLITS:
        rows = dataset.load_split(tiny_data_dir, split)
        ids[split] = {r["id"] for r in rows}
        keys[split] = {dataset.split_key({"id": r["id"], "meta": r["meta"]}) for r in rows}
        assert len(ids[split]) == len(rows)
        for r in rows:  # the split is a pure function of the piece
            assert dataset.split_of(dataset.split_key(r)) == split
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not ids[a] & ids[b]
        assert not keys[a] & keys[b]


def test_rebuild_is_deterministic_and_corrupt_files_are_skipped(tiny_data_dir, tmp_path, capsys):
    garbage = tmp_path / "garbage.abc"
    garbage.write_bytes(bytes(range(256)) * 8)  # binary: unreadable as ABC
    broken = tmp_path / "broken.abc"
    broken.write_text("X:1\nT:Broken\nM:4/4\nK:C\n|]]]((((::::\n\n"
                      "X:2\nT:Fine\nM:2/4\nL:1/8\nK:G\nGABc dedB|dedB dedB|c2ec B2dB|c2A2 A2BA|GABc dedB|\n")
    out_dir = corpus.build("tiny", tmp_path / "data", workers=1, extra_files=[garbage, broken])
    m = json.loads((out_dir / "manifest.json").read_text())
    assert list(m["file_errors"]) == ["extra/garbage.abc"]
    reason = m["file_errors"]["extra/garbage.abc"]
    assert "\n" not in reason and "binary" in reason
    base = json.loads((tiny_data_dir / "manifest.json").read_text())
    assert m["failures"]["no_notes"] == base["failures"].get("no_notes", 0) + 1  # tune X:1
    printed = capsys.readouterr().out
    assert "garbage.abc" in printed
    # same pieces in the same splits as the session build (2 workers there, 1 here)
    for split in dataset.SPLITS:
        a = [r["id"] for r in dataset.load_split(tiny_data_dir, split)]
        b = [r["id"] for r in dataset.load_split(out_dir, split) if r["collection"] != "extra"]
        assert a == b
    extra = [r for s in dataset.SPLITS for r in dataset.load_split(out_dir, s) if r["collection"] == "extra"]
    assert [r["id"] for r in extra] == ["extra/broken#2"]


def test_cache_is_reused(tiny_data_dir, capsys):
    before = os.path.getmtime(tiny_data_dir / "train.jsonl")
    out = corpus.build("tiny", tiny_data_dir.parent, workers=1)
    assert out == tiny_data_dir
    assert "up to date" in capsys.readouterr().out
    assert os.path.getmtime(tiny_data_dir / "train.jsonl") == before


def test_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown split"):
        dataset.load_split(tmp_path, "training")
    with pytest.raises(UserError, match="divcfg data"):
        dataset.load_split(tmp_path, "train")
    with pytest.raises(UserError, match="unknown preset"):
        corpus.build("huge", tmp_path)


def test_windows_cut_at_bars_and_restate_the_meter(tiny_data_dir):
    tok = tk.load_tokenizer(tiny_data_dir)
    bar = tok["Bar_None"]
    ts_ids = {i for t, i in tok.vocab.items() if t.startswith("TimeSig_")}
    row = max(dataset.load_split(tiny_data_dir, "train"), key=lambda r: len(r["tokens"]))
    toks = row["tokens"]
    wins = corpus.windows(toks, bar, ts_ids, max_tokens=100, max_windows=50)
    assert len(wins) >= 2
    for w in wins:
        assert len(w) <= 100 and w[0] == bar and w[1] in ts_ids
        assert tk.tokens_to_score(tok, w) is not None
    # each window is the next slice of the original stream, with at most the meter restated
    pos = 0
    for w in wins:
        if toks[pos:pos + len(w)] != w:
            assert w[1] in ts_ids and toks[pos:pos + len(w) - 1] == [w[0]] + w[2:]
            pos += len(w) - 1
        else:
            pos += len(w)
    assert pos == len(toks)
    assert len(corpus.windows(toks, bar, ts_ids, max_tokens=100, max_windows=2)) == 2


def test_split_key_groups_tune_versions_but_not_mass_movements():
    a = {"id": "oneills1850/0732-0758_bs#740", "meta": {"collection": "oneills", "title": "The Night Cap"}}
    b = {"id": "oneills1850/0732-0758_mh#740", "meta": {"collection": "oneills", "title": "Night Cap, The"}}
    c = {"id": "ryansMammoth/NightCapJig", "meta": {"collection": "ryans", "title": "Night Cap -- Jig"}}
    assert dataset.split_key(a) == dataset.split_key(c)
    k1 = {"id": "palestrina/Kyrie_01", "meta": {"collection": "palestrina", "title": "Kyrie"}}
    k2 = {"id": "palestrina/Kyrie_02@3", "meta": {"collection": "palestrina", "title": "Kyrie"}}
    assert dataset.split_key(k1) != dataset.split_key(k2)
    assert dataset.split_key(k2) == dataset.split_key({"id": "palestrina/Kyrie_02@0", "meta": k2["meta"]})
    assert dataset.split_key(a) == dataset.split_key(b)
