"""The inputs of `divcfg data`: the scores bundled with music21, grouped into collections, and one
input file parsed into pieces (a worker process's job).

Per file: check it is readable (:func:`check_readable`), parse it whole once
(`music21.converter.parseFile`, no pickle cache; an ABC file becomes an Opus of tunes, other formats
one Score), then per piece `divcfg.music.extract.extract_piece` (notes, key, meter, metadata, with the
tune's ABC header from :func:`abc_headers`) and REMI tokens (`divcfg.music.tokenizer`). A piece that
fails is counted by cause; an unreadable file gets a one-line reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from pathlib import Path

from divcfg.music import tokenizer as tk
from divcfg.music.extract import extract_piece

# collection -> glob patterns relative to music21's corpus folder
COLLECTIONS = {
    "essen": ["essenFolksong/*.abc"],
    "oneills": ["oneills1850/*.abc"],
    "ryans": ["ryansMammoth/*.abc"],
    "aird": ["airdsAirs/*.abc"],
    "bach": ["bach/*.mxl", "bach/*.xml", "bach/*.krn"],
    "palestrina": ["palestrina/*.krn"],
    "monteverdi": ["monteverdi/*.mxl"],
    "trecento": ["trecento/*.xml", "trecento/*.mxl"],
    "folk": ["miscFolk/*.abc"],
    "classical": ["beethoven/*", "mozart/*.mxl", "haydn/*.mxl", "schumann_robert/*", "schumann_clara/*",
                  "schubert/*.xml", "chopin/*.krn", "handel/*.mxl", "corelli/*.xml", "cpebach/*.mxl",
                  "joplin/*.mxl", "weber/*.mxl", "beach/*.musicxml", "verdi/*.mxl", "liliuokalani/*.mxl",
                  "johnson_j_r/*.mxl", "ciconia/*.xml", "luca/*.xml", "lusitano/*.mxl"],
}
# Essen's test*/variant files repeat tunes of the other files: left out. (josquin/*.abc is
# left out too: each X: of those files is one voice of a polyphonic piece, not a tune.)
EXCLUDE = re.compile(r"essenFolksong/(test[01de]|variant0)\.abc$")
PARSEABLE = {".abc", ".mxl", ".xml", ".musicxml", ".krn"}


def corpus_root() -> Path:
    import music21
    return Path(music21.__file__).resolve().parent / "corpus"


def abc_headers(text: str) -> dict[str, list[dict]]:
    """X: number -> list (in file order) of {field letter: [values]} for each tune's header."""
    tunes: dict[str, list[dict]] = {}
    cur = None
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z]):\s*(.*?)\s*$", line)
        if not m:
            continue
        field, value = m.group(1), m.group(2)
        if field == "X":
            cur = {}
            tunes.setdefault(value.strip(), []).append(cur)
        elif cur is not None and field in "TORNQKMCBSZL":
            cur.setdefault(field, []).append(value)
    return tunes


def check_readable(path: Path) -> str | None:
    """One-line reason why ``path`` cannot be a score file, or None if it looks fine."""
    try:
        data = path.read_bytes()
    except OSError as e:
        return f"unreadable: {type(e).__name__}: {e.strerror or e}"
    if not data.strip():
        return "empty file"
    suffix = path.suffix.lower()
    if suffix not in PARSEABLE:
        return f"unsupported file type '{suffix}'"
    if suffix == ".abc":
        if b"\x00" in data:
            return "binary data in an ABC text file"
        text = data.decode("latin-1")
        if not re.search(r"^K:", text, re.M):
            return "no ABC tune found (no K: header line)"
    return None


def parse_file(job: tuple[str, str, str]) -> dict:
    """Worker: every piece of one file. job = (collection, relative path, absolute path)."""
    import warnings

    warnings.filterwarnings("ignore")
    collection, rel, path = job
    out = {"rel": rel, "pieces": [], "failures": {}, "file_error": None}
    reason = check_readable(Path(path))
    if reason:
        out["file_error"] = reason
        return out
    try:
        from music21 import converter, stream
        with _lean_music21():
            parsed = converter.parseFile(path, forceSource=True, storePickle=False)
    except Exception as e:  # noqa: BLE001 - any parser failure is a reason, never fatal
        out["file_error"] = f"parse_error: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
        return out
    headers = {}
    if path.lower().endswith(".abc"):
        headers = abc_headers(Path(path).read_bytes().decode("utf-8", errors="replace"))
    scores = list(parsed.scores) if isinstance(parsed, stream.Opus) else [parsed]
    if not scores:
        out["file_error"] = "no scores found"
        return out
    tok = worker_tokenizer()
    stem = rel.rsplit(".", 1)[0]
    used = {}
    for i, s in enumerate(scores):
        number = None
        header = None
        if headers:
            number = str(s.metadata.number) if s.metadata is not None and s.metadata.number is not None else None
            cands = headers.get(number) if number is not None else None
            if cands:
                k = used.get(number, 0)
                header = cands[min(k, len(cands) - 1)]
                used[number] = k + 1
            elif len(scores) == 1 and len(headers) == 1:
                header = next(iter(headers.values()))[0]
        pid = f"{stem}#{number}" if len(scores) > 1 and number is not None else (stem if len(scores) == 1 else f"{stem}#{i}")
        if pid in {p["id"] for p in out["pieces"]}:
            pid = f"{pid}.{i}"
        try:
            score, meta = extract_piece(s, header, collection)
        except Exception as e:  # noqa: BLE001
            cause = f"extract_error:{type(e).__name__}"
            out["failures"][cause] = out["failures"].get(cause, 0) + 1
            continue
        if score is None:
            out["failures"][meta] = out["failures"].get(meta, 0) + 1
            continue
        try:
            tokens = tk.score_to_tokens(tok, score)
        except Exception as e:  # noqa: BLE001
            cause = f"tokenize_error:{type(e).__name__}"
            out["failures"][cause] = out["failures"].get(cause, 0) + 1
            continue
        meta["source_file"] = rel
        notes_sig = hashlib.sha1(json.dumps(tokens).encode()).hexdigest()[:16]
        out["pieces"].append({"id": pid, "collection": collection, "meta": meta, "tokens": tokens,
                              "content_hash": notes_sig})
    return out


_TOKENIZER = None


@contextlib.contextmanager
def _lean_music21():
    """Skip music21's notation work that we never read (beaming, clef guessing): ~2x faster
    ABC parsing. Restored on exit, so music21 behaves normally outside the parse."""
    from music21 import clef, stream

    saved = stream.Stream.makeBeams, clef.bestClef

    def no_beams(self, *args, inPlace=False, **kwargs):
        return None if inPlace else self

    stream.Stream.makeBeams = no_beams
    clef.bestClef = lambda *a, **k: clef.TrebleClef()
    try:
        yield
    finally:
        stream.Stream.makeBeams, clef.bestClef = saved


def worker_tokenizer():
    """The REMI tokenizer of this process, made once (``build`` makes it before forking the workers)."""
    global _TOKENIZER
    if _TOKENIZER is None:
        _TOKENIZER = tk.make_tokenizer()
    return _TOKENIZER
