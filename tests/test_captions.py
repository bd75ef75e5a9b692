"""Captions from real corpus metadata: dance, region, key, meter, composer; determinism."""

from __future__ import annotations

import pytest

from divcfg.music import captions as cap
from divcfg.music.sources import corpus_root, parse_file


COLLECTION_OF = {"ryansMammoth": "ryans", "oneills1850": "oneills", "essenFolksong": "essen", "bach": "bach"}


def _pieces(rel: str) -> list[dict]:
    """The pieces the data pipeline extracts from one real corpus file."""
    out = parse_file((COLLECTION_OF[rel.split("/")[0]], rel, str(corpus_root() / rel)))
    assert out["file_error"] is None
    return out["pieces"]


def test_ryans_reel_caption():
    [piece] = _pieces("ryansMammoth/7thRegimentReel.abc")  # R:reel, M:2/4, K:A
    meta = piece["meta"]
    assert meta["dance"] == "reel" and meta["meter"] == "2/4" and meta["key"] == "A major"
    caps = cap.captions(meta, piece["id"])
    assert caps[0].startswith("a reel from Ryan's Mammoth Collection in A major, 2/4")
    assert all("reel" in c for c in caps)


def test_explicit_mode_from_abc_key_field():
    [piece] = _pieces("ryansMammoth/AWillieWeHaveMissdYouStrathspey.abc")  # K: Edor, M: C
    meta = piece["meta"]
    assert meta["key"] == "E dorian" and meta["key_source"] == "abc_K"
    assert meta["dance"] == "strathspey" and meta["meter"] == "4/4"
    assert "a strathspey from Ryan's Mammoth Collection in E dorian, 4/4" in cap.captions(meta, piece["id"])[0]


def test_oneills_jigs():
    pieces = _pieces("oneills1850/0721-0730.abc")  # ten jigs in 6/8, K:D / K:G
    assert len(pieces) >= 8
    for p in pieces:
        meta = p["meta"]
        assert meta["dance"] == "jig" and meta["meter"] == "6/8"
        assert meta["key"].split()[1] in ("major", "minor", "dorian", "mixolydian")
        c0 = cap.captions(meta, p["id"])[0]
        assert c0.startswith(f"an Irish jig in {meta['key']}, 6/8"), c0


def test_essen_region_and_genre():
    pieces = {p["id"]: p for p in _pieces("essenFolksong/ballad10.abc")}
    # X:15, "O: Mitteleuropa, Deutschland (BRD) , Hessen", R: Ballade, M: 3/4, K: Ab (ends on Ab)
    p = pieces["essenFolksong/ballad10#15"]
    meta = p["meta"]
    assert (meta["region_adj"], meta["subregion"], meta["genre"]) == ("German", "Hesse", "ballad")
    assert meta["meter"] == "3/4" and meta["key"] == "Ab major"
    assert cap.captions(meta, p["id"])[0] == f"a German ballad from Hesse in Ab major, 3/4, {meta['n_bars']} bars"


def test_bach_chorale_caption():
    [piece] = _pieces("bach/bwv277.krn")
    meta = piece["meta"]
    assert meta["n_voices"] == 4 and meta["composer"] == "J. S. Bach"
    assert cap.captions(meta, piece["id"])[0].startswith(f"a four-part chorale by J. S. Bach in {meta['key']}")
    assert meta["key"] == "D minor"  # the chorale's key signature has one flat and it ends on D


def test_captions_deterministic_and_varied():
    [piece] = _pieces("ryansMammoth/7thRegimentReel.abc")
    meta = piece["meta"]
    a = cap.captions(meta, piece["id"])
    assert a == cap.captions(dict(meta), piece["id"])
    assert 3 <= len(a) <= 5 and len(set(a)) == len(a)
    orders = {tuple(cap.captions(meta, f"id{i}")[1:]) for i in range(20)}
    assert len(orders) > 1  # the variant choice depends on the id


@pytest.mark.parametrize("text,expected", [("Ador", ("A", "dorian")), ("G", ("G", None)),
                                           ("E Minor", ("E", "minor")), ("Bbmix", ("Bb", "mixolydian")),
                                           ("F#m", ("F#", "minor")), ("none", (None, None))])
def test_parse_abc_key(text, expected):
    assert cap.parse_abc_key(text) == expected


def test_mode_from_final_and_dances():
    assert cap.mode_from_final(1, 4) == "minor"       # one sharp, ends on E
    assert cap.mode_from_final(1, 9) == "dorian"      # one sharp, ends on A
    assert cap.mode_from_final(0, 1) is None          # C# is not in C major's scale
    assert cap.normalise_dance("double jig") == "jig"
    assert cap.normalise_dance(" Slip Jig") == "slip jig"
    assert cap.normalise_dance("Ballade, Liebe") is None


def test_estimate_key_on_a_scale():
    c_major = [(i, p, 1.0) for i, p in enumerate([60, 62, 64, 65, 67, 69, 71, 72, 67, 64, 60])]
    assert cap.estimate_key(c_major) == "C major"
    a_minor = [(i, p, 1.0) for i, p in enumerate([57, 59, 60, 62, 64, 65, 68, 69, 64, 60, 57, 57])]
    assert cap.estimate_key(a_minor) == "A minor"
