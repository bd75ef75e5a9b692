"""Rich captions: descriptors of a piece's notes, the captions that name them, the attribute accuracy
that scores generations against them, and the `divcfg data --captions rich` build."""

import json
import random

import numpy as np
import pytest

from divcfg.music import descriptors as ds
from divcfg.music.attributes import DESCRIPTOR_COLUMNS, asked, attribute_accuracy


def _notes(pitches, dur=1.0):
    """A melody of equal notes, one after the other: (onset, duration, pitch) rows."""
    return np.array([(i * dur, dur, p) for i, p in enumerate(pitches)], np.float32)


def test_values_and_bands_of_simple_melodies():
    scale = _notes([60, 62, 64, 65, 67, 69, 71, 72])       # C major scale, quarter notes
    v = ds.values(scale)
    assert v == {"register": 66.0, "range": 12.0, "motion": 1.0, "steps": 1.0}
    assert ds.describe(scale) == {"register": "low", "motion": "slow", "steps": "stepwise"}
    arpeggio = _notes([72, 79, 84, 91, 84, 79, 72, 91], dur=0.25)   # high, wide, leaping, running
    assert ds.describe(arpeggio) == {"register": "high", "range": "wide", "motion": "running", "steps": "leaping"}
    middle = _notes([69, 71, 72, 64, 66, 76, 74, 72], dur=0.75)     # every statistic in the middle band
    assert ds.describe(middle) == {}
    assert ds.values(scale[:3]) is None and ds.describe(scale[:3]) == {}
    chord = np.array([(0, 1, 60), (0, 1, 67), (1, 1, 62), (1, 1, 69), (2, 1, 64), (2, 1, 71), (3, 1, 60), (3, 1, 76)],
                     np.float32)
    assert ds.values(chord)["motion"] == 1.0                  # onsets, not notes, per quarter
    assert ds.values(chord)["steps"] == pytest.approx(2 / 3)   # the melody is the top line 67 69 71 76


def test_phrases_round_trip_and_standard_captions_name_none():
    every = {name: word for (name, word) in ds.PHRASES}
    for name, (_, lo, _, hi) in ds.BANDS.items():
        for word in (lo, hi):
            text = "a jig in D major, " + ", ".join(ds.phrases({name: word}))
            assert ds.asked(text) == {name: word}
    assert len(every) == len(ds.BANDS)
    for text in ("an Irish jig in D major, 6/8, 16 bars", "a German ballad from Silesia in G major, 3/4",
                 "a long reel from Ryan's Mammoth Collection in D major"):
        assert ds.asked(text) == {}


@pytest.fixture(scope="module")
def rich_dir(tmp_path_factory):
    from divcfg.music.corpus import build
    return build("tiny", tmp_path_factory.mktemp("rich"), workers=2, quiet=True, captions="rich")


def _rows(d, split):
    return [json.loads(x) for x in (d / f"{split}.jsonl").read_text().splitlines()]


def test_rich_build_keeps_the_pieces_and_extends_the_captions(rich_dir, tiny_data_dir):
    from divcfg.music.pianoroll import score_notes
    from divcfg.music.tokenizer import load_tokenizer, tokens_to_score

    assert rich_dir.name == "tiny_rich"
    assert json.loads((rich_dir / "manifest.json").read_text())["config"]["captions"] == "rich"
    assert "captions" not in json.loads((tiny_data_dir / "manifest.json").read_text())["config"]
    tok = load_tokenizer(rich_dir)
    named = 0
    for split in ("train", "val", "test"):
        rich, std = _rows(rich_dir, split), _rows(tiny_data_dir, split)
        assert [r["id"] for r in rich] == [r["id"] for r in std]
        for r, s in zip(rich, std):
            assert r["tokens"] == s["tokens"]
            want = ds.describe(score_notes(tokens_to_score(tok, r["tokens"])))
            assert r["meta"]["descriptors"] == want
            for a, b in zip(r["captions"], s["captions"]):
                assert a.startswith(b)                         # the standard caption, then the phrases
                assert set(ds.asked(a).items()) <= set(want.items())
            assert ds.asked(r["captions"][0]) == want          # the canonical caption names them all
            named += len(want)
    assert named > 0


def test_descriptor_accuracy_scores_pieces_against_their_own_captions(rich_dir):
    from divcfg.music.tokenizer import load_tokenizer

    tok = load_tokenizer(rich_dir)
    rows = _rows(rich_dir, "train")[:80]
    seqs = [r["tokens"] for r in rows]
    texts = [r["captions"][0] for r in rows]
    metas = [r["meta"] for r in rows]
    own = attribute_accuracy(tok, seqs, texts, metas)
    shuffled = seqs[:]
    random.Random(0).shuffle(shuffled)
    other = attribute_accuracy(tok, shuffled, texts, metas)
    for c in DESCRIPTOR_COLUMNS:
        if not np.isnan(own.get(c, np.nan)):
            assert own[c] == 1.0, c                           # the caption was written from these notes
            assert other[c] < 0.9, (c, other[c])
    assert sum(c in own for c in DESCRIPTOR_COLUMNS) >= 3
    assert asked("a reel in D major, in a high register, leaping", {"key": "D major"}) == \
        {"key": (2, "major"), "descriptor_register": "high", "descriptor_steps": "leaping"}
    std = attribute_accuracy(tok, seqs[:5], ["a tune in D major"] * 5, [{"key": "D major"}] * 5)
    assert not any(c in std for c in DESCRIPTOR_COLUMNS)       # no caption names one: no column
    empty = attribute_accuracy(tok, [[]], ["a tune in a high register"], [{}])
    assert empty["attr_register"] == 0.0


def test_report_names_the_descriptor_columns_only_where_a_run_has_them():
    from divcfg.domains.music_report import MusicSection

    section = MusicSection()
    rich = {"systems": [{"label": "base", "attr_key_relative": 0.6, "attr_register": 0.47, "attr_steps": 0.4}]}
    plain = {"systems": [{"label": "base", "attr_key_relative": 0.6}]}
    assert section.attribute_columns(rich) == ["attr_key_relative", "attr_register", "attr_steps"]
    assert [c.key for c in section.extra_columns(rich)][-2:] == ["attr_register", "attr_steps"]
    assert "median pitch ≥ 73" in str(section.table_note(rich))
    assert "register" not in str(section.table_note(plain))
    assert section.attribute_columns(plain) == ["attr_key_relative"]
