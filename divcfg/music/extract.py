"""One music21 score -> a `symusic.Score` of its notes plus its metadata (`extract_piece`).

Notes go straight into a `symusic.Score` (480 ticks per quarter; all parts merged into one
track; ties joined; chords split into notes; grace notes dropped; a unison of two voices, same
onset and pitch, becomes one note, the longer one; **repeats are not expanded**, a piece is
played as written once; a pickup bar is shifted right by its padding so that bar lines fall on
bar starts). Fewer than ``MIN_NOTES`` notes (in the MIDI range 21..108) is a failure.

Meter: the time signatures of the first part, re-expressed within the tokenizer's vocabulary;
the piece's meter is the one in force for the longest time (music21 writes 1/8, 1/4, 9/16, ...
for irregular single bars and pickups). A piece whose meter is unsupported fails; other
unsupported time signatures are dropped and counted.

Key of a piece: ABC tunes take the tonic and mode of ``K:`` when the mode is written
("Ador", "Em"); a bare ``K:G`` gives only the signature, and the mode is the one whose tonic
is the final (lowest) note (K:G ending on E -> E minor; on A -> A dorian). Other formats, and
final notes that give an unlikely mode (phrygian, lydian, locrian; in Essen anything but
major/minor), use a Krumhansl-Schmuckler estimate (major/minor; `captions.estimate_key`).

Metadata (title, composer, region, dance, genre, tempo) comes from the ABC header fields and
the music21 metadata, via `divcfg.music.captions`. The build pipeline that calls this, one
worker per file, is `divcfg.music.sources` (called by `divcfg.music.corpus`).
"""

from __future__ import annotations

import re

from divcfg.music import captions as cap
from divcfg.music import tokenizer as tk

MIN_NOTES = 8


def clean_composer(name: str) -> str | None:
    """'Philippe de Vitry\n(1291 - 1361)' -> 'Philippe de Vitry'; 'Bach, Johann Sebastian' ->
    'Johann Sebastian Bach'."""
    name = re.sub(r"\(.*?\)", "", name.strip().splitlines()[0] if name.strip() else "").strip(" ,;")
    if "," in name:
        last, first = (x.strip() for x in name.split(",", 1))
        name = f"{first} {last}".strip()
    return name or None


def extract_piece(m21score, header: dict | None, collection: str) -> tuple[object | None, dict | str]:
    """(symusic.Score, meta) of one music21 Score, or (None, failure cause)."""
    from music21 import key as m21key
    from music21 import meter as m21meter
    from symusic import Note, Score, TimeSignature, Track

    tpq = tk.TICKS_PER_QUARTER
    parts = list(m21score.parts) or [m21score]
    first_measures = parts[0].getElementsByClass("Measure")
    shift = float(first_measures[0].paddingLeft) if len(first_measures) else 0.0
    n_bars = len(first_measures) - (1 if shift > 0 else 0)

    notes: list[list[float]] = []  # [onset_q, pitch, end_q]
    voices = 0
    part_names = []
    for part in parts:
        flat = part.flatten()
        open_ties: dict[int, int] = {}
        n_before = len(notes)
        for n in flat.notes:
            if n.duration.isGrace or n.quarterLength <= 0 or not hasattr(n, "pitches"):
                continue
            if n.classes and ("Unpitched" in n.classes or "PercussionChord" in n.classes):
                continue
            onset = float(n.offset) + shift
            end = onset + float(n.quarterLength)
            members = n.notes if hasattr(n, "notes") and n.isChord else [n]
            for m in members:
                pitch = int(m.pitch.midi)
                tie = (m.tie or n.tie)
                ttype = tie.type if tie is not None else None
                if ttype in ("continue", "stop") and pitch in open_ties:
                    idx = open_ties[pitch]
                    notes[idx][2] = max(notes[idx][2], end)
                    if ttype == "stop":
                        del open_ties[pitch]
                    continue
                notes.append([onset, pitch, end])
                if ttype == "start":
                    open_ties[pitch] = len(notes) - 1
        if len(notes) > n_before:
            voices += 1
            part_names.append((part.partName or "").lower())
    # a unison of two voices (same onset and pitch) becomes one note, the longer one
    longest: dict[tuple[float, int], float] = {}
    for onset, pitch, end in notes:
        k = (round(onset, 6), pitch)
        longest[k] = max(longest.get(k, end), end)
    notes = [[o, p, e] for (o, p), e in sorted(longest.items())]
    if not notes:
        return None, "no_notes"
    if len(notes) < MIN_NOTES:
        return None, "too_short"

    # time signatures (of the first part), re-expressed within the tokenizer's vocabulary.
    # The piece's meter is the one in force for the longest time (music21 writes 1/8, 1/4,
    # 9/16, ... for irregular single bars and pickups); unsupported ones are dropped.
    flat0 = parts[0].flatten()
    end_q = max(e for _, _, e in notes)
    raw = [(0.0 if ts.offset == 0 else float(ts.offset) + shift, ts)
           for ts in flat0.getElementsByClass(m21meter.TimeSignature)]
    span: dict[str, float] = {}
    for i, (t, ts) in enumerate(raw):
        t_next = raw[i + 1][0] if i + 1 < len(raw) else end_q
        span[ts.ratioString] = span.get(ts.ratioString, 0.0) + max(0.0, t_next - t)
    meter = max(span, key=span.get) if span else None
    if meter is not None:
        num, den = (int(x) for x in meter.split("/"))
        if tk.supported_time_signature(num, den) is None:
            return None, f"unsupported_meter:{meter}"
    ts_events = []
    dropped_ts = 0
    for t, ts in raw:
        sup = tk.supported_time_signature(int(ts.numerator), int(ts.denominator))
        if sup is None:
            dropped_ts += 1
            continue
        ts_events.append((0.0 if not ts_events else t, sup))  # the first one in force from 0
    score = Score(tpq)
    for t, (num, den) in ts_events:
        if score.time_signatures and score.time_signatures[-1].time == round(t * tpq):
            continue
        score.time_signatures.append(TimeSignature(round(t * tpq), num, den))
    track = Track(program=0, is_drum=False, name="merged")
    for onset, pitch, end in notes:
        if 21 <= pitch <= 108:
            track.notes.append(Note(round(onset * tpq), max(1, round((end - onset) * tpq)), pitch, 80))
    if len(track.notes) < MIN_NOTES:
        return None, "too_short"
    track.notes.sort()
    score.tracks.append(track)

    # key
    header = header or {}
    sigs = flat0.getElementsByClass(m21key.KeySignature)
    sharps = int(sigs[0].sharps) if len(sigs) else 0
    last_onset = max(o for o, _, _ in notes)
    final_pc = min(p for o, p, _ in notes if o == last_onset) % 12
    key_text = (header.get("K") or [None])[0]
    key_source = None
    key_name = None
    if header:
        tonic, mode = cap.parse_abc_key(key_text)
        if tonic and mode:
            key_name, key_source = f"{tonic} {mode}", "abc_K"
        else:
            mode = cap.mode_from_final(sharps, final_pc)
            if mode in cap.MODES_BY_COLLECTION.get(collection, ("major", "minor")):
                key_name, key_source = f"{cap.tonic_name(final_pc, sharps)} {mode}", "signature+final_note"
    if key_name is None:
        key_name = cap.estimate_key([(o, p, e - o) for o, p, e in notes], sharps)
        key_source = "krumhansl_kessler"

    md = m21score.metadata
    title = (header.get("T") or [None])[0] or (md.title if md is not None else None)
    if title and re.fullmatch(r"(bwv|wwv)?[\w.\-]*\.(mxl|xml|krn|musicxml)", title, re.I):
        title = title.rsplit(".", 1)[0]
    composer = None
    if md is not None and md.composer and collection not in ("essen", "oneills", "ryans", "aird"):
        composer = clean_composer(str(md.composer))
    if collection in ("ryans", "oneills", "aird") and header.get("C"):
        composer = None  # "C:" of the fiddle books is a collector/arranger, not a composer caption
    meta = {
        "collection": collection, "title": title, "composer": composer,
        "key": key_name, "key_source": key_source, "key_signature_sharps": sharps,
        "meter": meter or "none", "n_bars": int(n_bars), "n_voices": int(voices),
        "n_notes": len(track.notes),
    }
    if dropped_ts:
        meta["dropped_time_signatures"] = dropped_ts
    if collection in cap.COLLECTION_COMPOSER:
        meta["composer"] = cap.COLLECTION_COMPOSER[collection]
    if header.get("R"):
        meta["rhythm_field"] = header["R"][0]
        dance = cap.normalise_dance(header["R"][0])
        if dance and collection != "essen":
            meta["dance"] = dance
        genre = cap.essen_genre(header["R"][0]) if collection == "essen" else None
        if genre:
            meta["genre"] = genre
    if collection == "ryans" and "dance" not in meta and title and "--" in title:
        dance = cap.normalise_dance(title.split("--")[-1])
        if dance:
            meta["dance"] = dance
    if header.get("O") and collection == "essen":
        adj, country, sub = cap.essen_region(header["O"][0])
        meta["origin"] = header["O"][0]  # as written (German), e.g. "Europa, Mitteleuropa, Deutschland"
        meta["region"] = ", ".join(x for x in (sub, country) if x) or header["O"][0]
        if adj:
            meta["region_adj"], meta["country"] = adj, country
        if sub:
            meta["subregion"] = sub
    tempo = cap.tempo_word((header.get("N") or []) + (header.get("Q") or []))
    if tempo:
        meta["tempo"] = tempo
    if collection == "bach":
        satb = sum(any(v in n for v in ("soprano", "alto", "tenor", "bass")) for n in part_names)
        if satb >= 4:
            meta["n_voices"] = 4  # instrumental doublings of the four voices are not extra voices
    return score, meta
