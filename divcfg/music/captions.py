"""Captions written from a piece's metadata, with template variety.

``captions(meta, piece_id) -> [canonical, variant, ...]``. The canonical caption states every
known field (style/collection, region or dance, composer, key and mode, meter, voices, length);
the 3 variants reword it, reorder it and drop some fields, chosen deterministically from a hash
of the piece id (same id -> same captions, on every machine).

Also here: reading region/dance/tempo out of raw ABC header fields, and naming keys.
"""

from __future__ import annotations

import hashlib
import random
import re

# ---------------------------------------------------------------- collections
# collection -> (style noun phrase without article, source book or None)
COLLECTION_STYLE = {
    "essen": ("folk song", "the Essen folk song collection"),
    "oneills": ("Irish tune", "O'Neill's Music of Ireland (1850 Melodies)"),
    "ryans": ("fiddle tune", "Ryan's Mammoth Collection"),
    "aird": ("tune", "Aird's Selection of Scotch, English, Irish and Foreign Airs"),
    "bach": ("chorale", None),
    "palestrina": ("Renaissance mass movement", None),
    "monteverdi": ("madrigal", None),
    "trecento": ("fourteenth-century Italian piece", None),
    "josquin": ("Renaissance motet", None),
    "classical": ("classical piece", None),
    "folk": ("folk tune", None),
    "extra": ("tune", None),
}
COLLECTION_ADJ = {"oneills": "Irish"}
# mixed-origin books are named instead of given a nationality
COLLECTION_SHORT = {"ryans": "Ryan's Mammoth Collection", "aird": "Aird's Airs"}
COLLECTION_COMPOSER = {"bach": "J. S. Bach", "palestrina": "Palestrina", "monteverdi": "Monteverdi",
                       "josquin": "Josquin des Prez"}

# ---------------------------------------------------------------- Essen regions (O: field)
# German place names in the Essen headers -> (adjective, English place name)
COUNTRY = {
    "Deutschland": ("German", "Germany"), "China": ("Chinese", "China"), "Irland": ("Irish", "Ireland"),
    "Luxemburg": ("Luxembourgish", "Luxembourg"), "Lothringen": ("Lorraine", "Lorraine"),
    "Schweiz": ("Swiss", "Switzerland"), "Niederlande": ("Dutch", "the Netherlands"),
    "Ungarn": ("Hungarian", "Hungary"), "Jugoslawien": ("Yugoslav", "Yugoslavia"),
    "Tschechoslowakei": ("Czechoslovak", "Czechoslovakia"), "Island": ("Icelandic", "Iceland"),
    "Mexiko": ("Mexican", "Mexico"), "Frankreich": ("French", "France"),
    "Oesterreich": ("Austrian", "Austria"), "Polen": ("Polish", "Poland"), "UdSSR": ("Russian", "the USSR"),
    "Russland": ("Russian", "Russia"), "Daenemark": ("Danish", "Denmark"), "Schweden": ("Swedish", "Sweden"),
    "Rumaenien": ("Romanian", "Romania"), "Elsass": ("Alsatian", "Alsace"), "Tirol": ("Tyrolean", "Tyrol"),
    "Steiermark": ("Styrian", "Styria"), "Norwegen": ("Norwegian", "Norway"), "Italien": ("Italian", "Italy"),
    "Belgien": ("Belgian", "Belgium"), "England": ("English", "England"), "Amerika": ("American", "America"),
    "Taiwan": ("Taiwanese", "Taiwan"), "Finnland": ("Finnish", "Finland"), "Spanien": ("Spanish", "Spain"),
}
SUBREGION = {
    "Schlesien": "Silesia", "Rheinland": "the Rhineland", "Westfalen": "Westphalia", "Hessen": "Hesse",
    "Schwaben": "Swabia", "Schwarzwald": "the Black Forest", "Brandenburg": "Brandenburg",
    "Sachsen": "Saxony", "Thueringen": "Thuringia", "Pommern": "Pomerania", "Ostpreussen": "East Prussia",
    "Baden": "Baden", "Franken": "Franconia", "Wuerttemberg": "Wuerttemberg", "Rheinpfalz": "the Palatinate",
    "Niedersachsen": "Lower Saxony", "Bayern": "Bavaria", "Gottschee": "Gottschee",
    "Siebenbuergen": "Transylvania", "Galizien": "Galicia", "Rheinprovinz": "the Rhine Province",
    "Shaanxi": "Shaanxi", "Shanxi": "Shanxi", "Sichuan": "Sichuan", "Yunnan": "Yunnan", "Hubei": "Hubei",
    "Hunan": "Hunan", "Anhui": "Anhui", "Liaoning": "Liaoning", "Shandong": "Shandong", "Jiangsu": "Jiangsu",
    "Ningxia": "Ningxia", "Gansu": "Gansu", "Hebei": "Hebei", "Henan": "Henan", "Zhejiang": "Zhejiang",
    "Sudetenland": "the Sudetenland", "Ukraine": "Ukraine", "Bessarabien": "Bessarabia",
    "Burgenland": "Burgenland", "Oberwallis": "Upper Valais", "Lothringen": "Lorraine", "Elsass": "Alsace",
    "Tirol": "Tyrol", "Steiermark": "Styria", "Maehren": "Moravia", "Slowakei": "Slovakia",
    "Flandern": "Flanders", "flaemisch": "Flanders",
}
# first word of an Essen ``R:`` field (spaces and hyphens removed, lower case) -> genre
ESSEN_GENRE = {
    "ballade": "ballad", "romanze": "romance", "liebeslied": "love song", "liebeslieder": "love song",
    "liebe": "love song", "xiaodiao": "ditty (xiaodiao)", "shange": "mountain song (shan'ge)",
    "haozi": "work song (haozi)", "kinderlied": "children's song", "kinder": "children's song",
    "tanzlied": "dance song", "erzaehlendesvolkslied": "narrative song", "erzaehlung": "narrative song",
    "geistlich": "sacred song", "geistliches": "sacred song", "geistliche": "sacred song",
    "abschiedslied": "farewell song", "scherzlied": "humorous song", "jugendlied": "youth song",
    "soldatenlied": "soldier's song", "hochzeits": "wedding song", "historischeslied": "historical song",
    "sagenlied": "legend song", "sage": "legend song", "studenten": "student song", "zech": "drinking song",
    "wiegenlied": "lullaby", "weihnachtslied": "Christmas song", "arbeitslied": "work song",
    "wuge": "dance song (wuge)",
}


def essen_genre(rhythm: str | None) -> str | None:
    """Essen ``R:`` ("Ballade, Braut - Werbung", "Kinder - Lied") -> "ballad", "children's song"."""
    if not rhythm:
        return None
    first = re.split(r"[,;.\]]", rhythm)[0]
    word = re.sub(r"[^a-z]", "", first.lower())
    return ESSEN_GENRE.get(word)


def essen_region(origin: str | None) -> tuple[str | None, str | None, str | None]:
    """Essen ``O:`` header -> (adjective, country, subregion), e.g.
    "Europa, Mitteleuropa, Deutschland, Schlesien" -> ("German", "Germany", "Silesia")."""
    if not origin:
        return None, None, None
    words = [w for w in re.split(r"[,;/()]+|\s+-\s+", origin) for w in [w.strip()] if w]
    adj = country = sub = None
    for w in words:
        w0 = w.split()[0] if w.split() else w
        if adj is None and w0 in COUNTRY:
            adj, country = COUNTRY[w0]
            if w0 in SUBREGION:  # Lorraine, Alsace, Tyrol are both
                sub = None
        elif adj is not None and sub is None and w0 in SUBREGION and SUBREGION[w0] != country:
            sub = SUBREGION[w0]
    return adj, country, sub


# ---------------------------------------------------------------- dances (R: field)
DANCES = {
    "reel": "reel", "jig": "jig", "double jig": "jig", "single jig": "jig", "slip jig": "slip jig",
    "slipjig": "slip jig", "hornpipe": "hornpipe", "strathspey": "strathspey", "clog": "clog",
    "air": "air", "highland fling": "highland fling", "fling": "highland fling", "waltz": "waltz",
    "walkaround": "walkaround", "slide": "slide", "march": "march", "gavotte": "gavotte",
    "polka": "polka", "schottische": "schottische", "quickstep": "quickstep", "minuet": "minuet",
    "set dance": "set dance", "long dance": "long dance", "country dance": "country dance",
}


def normalise_dance(rhythm: str | None) -> str | None:
    """ABC ``R:`` value -> a dance name from DANCES ("double jig" -> "jig"), else None."""
    if not rhythm:
        return None
    r = re.sub(r"[^a-z ]", " ", rhythm.lower())
    r = re.sub(r"\s+", " ", r).strip()
    if r in DANCES:
        return DANCES[r]
    for name in sorted(DANCES, key=len, reverse=True):  # "reel (fast)", "hornpipe, pt 1"
        if re.search(rf"\b{name}\b", r):
            return DANCES[name]
    return None


TEMPO_WORDS = [("very slow", "very slow"), ("slow", "slow"), ("moderate", "moderate"),
               ("lively", "lively"), ("spirit", "lively"), ("quick", "quick"), ("fast", "quick"),
               ("brisk", "lively"), ("gracefully", "graceful"), ("tenderly", "tender")]


def tempo_word(texts) -> str | None:
    """First tempo word found in header notes ("Very slow" -> "very slow"; "With spirit" -> "lively")."""
    for t in texts or ():
        low = t.lower()
        if "collected" in low or "transcribed" in low:
            continue
        for pat, word in TEMPO_WORDS:
            if pat in low:
                return word
    return None


# ---------------------------------------------------------------- keys
PITCH_NAMES = ["C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"]
SHARP_NAMES = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]
FLAT_NAMES = ["C", "Db", "D", "Eb", "E", "F", "Gb", "G", "Ab", "A", "Bb", "B"]
# mode -> semitones of its tonic above the major (ionian) tonic of the same signature
MODE_OFFSET = {"major": 0, "dorian": 2, "phrygian": 4, "lydian": 5, "mixolydian": 7, "minor": 9,
               "locrian": 11}
# modes a bare signature + final note may name, per collection (others fall back to music21's
# major/minor analysis): dorian and mixolydian tunes are common in the Irish and Scottish
# books, while the Essen pentatonic and ballad tunes ending on other degrees are not modal.
MODES_BY_COLLECTION = {c: ("major", "minor", "dorian", "mixolydian") for c in ("oneills", "ryans", "aird")}
MODE_ALIASES = {"": "major", "maj": "major", "major": "major", "ion": "major", "ionian": "major",
                "m": "minor", "min": "minor", "minor": "minor", "aeo": "minor", "aeolian": "minor",
                "dor": "dorian", "dorian": "dorian", "mix": "mixolydian", "mixolydian": "mixolydian",
                "lyd": "lydian", "lydian": "lydian", "phr": "phrygian", "phrygian": "phrygian",
                "loc": "locrian", "locrian": "locrian"}


def tonic_name(pc: int, sharps: int) -> str:
    """Spell pitch class ``pc`` in a key signature with ``sharps`` (negative = flats)."""
    pc %= 12
    if sharps > 0:
        return SHARP_NAMES[pc]
    if sharps < 0:
        return FLAT_NAMES[pc]
    return PITCH_NAMES[pc]


def mode_from_final(sharps: int, final_pc: int) -> str | None:
    """The diatonic mode of a signature whose tonic is ``final_pc`` (None if not diatonic).

    The major tonic of a signature with s sharps is 7·s mod 12; mode m has tonic
    (major tonic + MODE_OFFSET[m]) mod 12.
    """
    major_tonic = (7 * sharps) % 12
    for mode, off in MODE_OFFSET.items():
        if (major_tonic + off) % 12 == final_pc % 12:
            return mode
    return None


# Krumhansl & Kessler (1982) probe-tone profiles, tonic first
KK_MAJOR = (6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88)
KK_MINOR = (6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17)


def estimate_key(notes, sharps: int = 0) -> str | None:
    """Krumhansl-Schmuckler key estimate of (onset, pitch, duration) notes: the tonic and
    mode (major/minor) whose rotated Krumhansl-Kessler profile has the highest Pearson
    correlation with the duration-weighted pitch-class histogram. None if no notes."""
    import numpy as np

    hist = np.zeros(12)
    for _, p, d in notes:
        hist[int(p) % 12] += max(float(d), 1e-3)
    if hist.sum() <= 0:
        return None
    best, best_r = None, -2.0
    for mode, prof in (("major", KK_MAJOR), ("minor", KK_MINOR)):
        prof = np.asarray(prof)
        for tonic in range(12):
            r = np.corrcoef(hist, np.roll(prof, tonic))[0, 1]
            if r > best_r:
                best, best_r = (tonic, mode), r
    tonic, mode = best
    return f"{tonic_name(tonic, sharps)} {mode}"


def parse_abc_key(text: str | None) -> tuple[str | None, str | None]:
    """ABC ``K:`` text -> (tonic, explicit mode or None). "Ador" -> ("A", "dorian");
    "G" -> ("G", None); "E Minor" -> ("E", "minor")."""
    if not text:
        return None, None
    m = re.match(r"\s*([A-Ga-g])([#b]?)\s*([A-Za-z]*)", text)
    if not m:
        return None, None
    tonic = m.group(1).upper() + m.group(2)
    word = m.group(3).lower()
    if word in ("none", "hp", "perc"):
        return None, None
    word3 = word[:3] if word not in ("m",) else "m"
    mode = MODE_ALIASES.get(word3) if word else None
    return tonic, mode


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" and not word.lower().startswith("eu") else "a"


NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}


def length_word(n_bars: int) -> str:
    return "short" if n_bars <= 16 else ("long" if n_bars > 40 else "medium-length")


# ---------------------------------------------------------------- captions
def _facts(meta: dict) -> dict:
    """The phrases a caption is assembled from (None where unknown)."""
    coll = meta.get("collection", "extra")
    style, source = COLLECTION_STYLE.get(coll, ("piece", None))
    adj = meta.get("region_adj") or COLLECTION_ADJ.get(coll)
    dance = meta.get("dance")
    genre = meta.get("genre")
    n_voices = int(meta.get("n_voices") or 1)
    noun = dance or genre or style
    if coll == "essen" and not dance:
        noun = genre or "folk song"
    if coll == "bach":
        noun = "chorale"
    if adj and coll in ("oneills", "aird", "essen", "ryans") and noun in ("Irish tune", "Scottish tune"):
        noun = "tune"
    voices = None
    if n_voices > 1:
        voices = f"{NUMBER_WORDS.get(n_voices, str(n_voices))}-part"
    composer = meta.get("composer") or COLLECTION_COMPOSER.get(coll)
    return {"adj": adj, "noun": noun, "voices": voices, "composer": composer,
            "key": meta.get("key"), "meter": meta.get("meter") if meta.get("meter") not in (None, "none") else None,
            "free": meta.get("meter") == "none",
            "bars": int(meta.get("n_bars") or 0), "tempo": meta.get("tempo"),
            "place": meta.get("subregion") or COLLECTION_SHORT.get(coll), "country": meta.get("country"),
            "source": source,
            "style": style}


def _np(f: dict, with_voices=True, with_adj=True, with_place=True, with_composer=True) -> str:
    """Noun phrase: 'a four-part chorale by J. S. Bach', 'a German ballad from Silesia'."""
    words = []
    if with_voices and f["voices"]:
        words.append(f["voices"])
    if with_adj and f["adj"]:
        words.append(f["adj"])
    words.append(f["noun"])
    phrase = " ".join(words)
    phrase = f"{article(phrase)} {phrase}"
    if with_place and f["place"]:
        phrase += f" from {f['place']}"
    if with_composer and f["composer"]:
        phrase += f" by {f['composer']}"
    return phrase


def canonical_caption(meta: dict) -> str:
    """Every known field: 'an Irish jig in D major, 6/8, 16 bars'."""
    f = _facts(meta)
    s = _np(f)
    if f["key"]:
        s += f" in {f['key']}"
    tail = [x for x in (f["meter"] or ("free meter" if f["free"] else None), f"{f['bars']} bars" if f["bars"] else None,
                        f"{f['tempo']}" if f["tempo"] else None) if x]
    if tail:
        s += ", " + ", ".join(tail)
    return s


def _variants(f: dict) -> list[str]:
    key, meter, bars = f["key"], f["meter"], f["bars"]
    out = []
    np_short = _np(f, with_place=False)
    core = np_short[np_short.index(" ") + 1:]  # without article
    if key and meter:
        out.append(f"{core} in {meter} time, key of {key}")
        out.append(f"{key} {core.split(' by ')[0]} in {meter}" + (f" by {f['composer']}" if f["composer"] else ""))
    if key:
        out.append(f"{_np(f, with_voices=False)} in {key}")
        out.append(f"{article(length_word(bars))} {length_word(bars)} {core} in {key}" if bars else f"{core} in {key}")
    if meter:
        out.append(f"{_np(f, with_composer=False)} in {meter}")
    if f["source"]:
        out.append(f"{f['noun']} from {f['source']}" + (f" in {key}" if key else ""))
    if f["tempo"] and key:
        out.append(f"{article(f['tempo'])} {f['tempo']} {core} in {key}")
    if f["country"] and f["place"]:
        out.append(f"{f['noun']} from {f['place']}, {f['country']}" + (f", {meter}" if meter else ""))
    if bars and meter:
        out.append(f"{bars} bars of {meter}: {np_short}" + (f" in {key}" if key else ""))
    if not out:
        out.append(np_short)
    return out


def captions(meta: dict, piece_id: str, n_variants: int = 3) -> list[str]:
    """[canonical] + up to ``n_variants`` distinct reworded variants, deterministic in piece_id.

    A *rich* piece (``meta["descriptors"]``, `divcfg.music.descriptors`) has its descriptors' phrases
    appended: all of them to the canonical caption, each with probability 0.6 to a variant."""
    first = canonical_caption(meta)
    pool = [v for v in dict.fromkeys(_variants(_facts(meta))) if v != first]
    seed = int.from_bytes(hashlib.sha1(piece_id.encode()).digest()[:8], "big")
    rng = random.Random(seed)
    rng.shuffle(pool)
    out = [first] + pool[:n_variants]
    if meta.get("descriptors") is None:
        return out
    from divcfg.music.descriptors import phrases
    words = phrases(meta["descriptors"])
    return [", ".join([text] + [w for w in words if i == 0 or rng.random() < 0.6]) for i, text in enumerate(out)]
