"""`divcfg data`: the training set built from the scores bundled with music21.

Pipeline (one worker process per input file, files largest first):

1. parse the whole file once (`music21.converter.parseFile`, no pickle cache): an ABC file
   becomes an Opus of tunes, other formats one Score;
2. per piece (`divcfg.music.extract.extract_piece`): notes straight into a `symusic.Score`
   (480 ticks per quarter; all parts merged into one track; ties joined; chords split into
   notes; grace notes dropped; **repeats are not expanded**, a piece is played as written once;
   a pickup bar is shifted right by its padding so that bar lines fall on bar starts), with its
   key and meter;
3. REMI tokens (`divcfg.music.tokenizer`), key/meter/region/dance metadata and captions
   (`divcfg.music.captions`);
4. in the parent: exact duplicates dropped (same notes), length filter or bar-aligned windows,
   a deterministic split by a hash of the piece's *split key* (its normalised title where
   it has one, so that versions of one tune land in the same split; else its id):
   ``h = sha1(key) mod 1000``: ``h < 900`` train, ``< 950`` val, else test.

Key of a piece: from ``K:`` of an ABC tune, else signature + final note, else a
Krumhansl-Schmuckler estimate; see `divcfg.music.extract`.

A piece that fails is skipped and counted by cause; an unreadable file gets a one-line reason.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from divcfg.errors import UserError
from divcfg.music import captions as cap
from divcfg.music import tokenizer as tk
from divcfg.music.extract import MIN_NOTES, extract_piece

PIPELINE_VERSION = 5
SPLITS = ("train", "val", "test")
SPLIT_BOUNDS = (900, 950)  # of 1000: train < 900 <= val < 950 <= test

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

PRESETS = {
    "tiny": {"files": ["oneills1850/0001-0050.abc", "oneills1850/0721-0730.abc",
                       "ryansMammoth/7thRegimentReel.abc", "ryansMammoth/AWillieWeHaveMissdYouStrathspey.abc",
                       "essenFolksong/ballad10.abc", "essenFolksong/erk5.abc",
                       "bach/bwv101.7.mxl", "bach/bwv277.krn", "bach/bwv10.7.mxl"],
             "max_tokens": 512, "long": "drop", "max_windows": 1},
    "small": {"collections": ["essen", "oneills", "ryans", "aird"],
              "max_tokens": 512, "long": "drop", "max_windows": 1},
    "full": {"collections": list(COLLECTIONS), "max_tokens": 1024, "long": "window", "max_windows": 8},
}


# ================================================================ inputs
def corpus_root() -> Path:
    import music21
    return Path(music21.__file__).resolve().parent / "corpus"


def preset_files(preset: str) -> list[tuple[str, str]]:
    """(collection, relative path) of every input file of a preset, sorted."""
    spec = PRESETS[preset]
    root = corpus_root()
    if "files" in spec:
        out = []
        for rel in spec["files"]:
            coll = next((c for c, pats in COLLECTIONS.items() if any(Path(rel).match(p) for p in pats)), "extra")
            out.append((coll, rel))
        return sorted(out)
    out = []
    for coll in spec["collections"]:
        for pat in COLLECTIONS[coll]:
            for p in root.glob(pat):
                rel = p.relative_to(root).as_posix()
                if p.is_file() and p.suffix.lower() in PARSEABLE and not EXCLUDE.search(rel):
                    out.append((coll, rel))
    return sorted(set(out))


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
    tok = _worker_tokenizer()
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


def _worker_tokenizer():
    global _TOKENIZER
    if _TOKENIZER is None:
        _TOKENIZER = tk.make_tokenizer()
    return _TOKENIZER


# ================================================================ split, windows
# collections whose titles name a tune (variants of one tune share it): split by title there.
# Elsewhere titles repeat across different works (every Palestrina mass has a "Kyrie"): by id.
SPLIT_BY_TITLE = {"essen", "oneills", "ryans", "aird", "folk", "bach"}


def split_key(piece: dict) -> str:
    """What the split hashes: the normalised title ("The Hag with the Money -- Jig" ->
    "hagwithmoney", "25. Christ lag in Todesbanden" -> "christlagintodesbanden") in
    SPLIT_BY_TITLE collections, else the piece id (windows of a piece share its base id)."""
    meta = piece["meta"]
    base_id = piece["id"].split("@", 1)[0]
    if meta.get("collection", piece.get("collection")) not in SPLIT_BY_TITLE:
        return f"id:{base_id}"
    title = (meta.get("title") or "").lower()
    title = re.sub(r"--.*$", "", title)  # Ryan's "Name -- Reel"
    title = re.sub(r"^[\d\s.,:;-]+", "", title)  # "25. Christ lag ..."
    norm = re.sub(r"[^a-z0-9]+", "", re.sub(r"\b(the|a|an|der|die|das)\b", "", title))
    return f"title:{norm}" if len(norm) >= 4 else f"id:{base_id}"


def split_of(key: str) -> str:
    h = int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") % 1000
    return "train" if h < SPLIT_BOUNDS[0] else ("val" if h < SPLIT_BOUNDS[1] else "test")


def windows(tokens: list[int], bar_id: int, timesig_ids: set[int], max_tokens: int, max_windows: int) -> list[list[int]]:
    """Cut ``tokens`` at Bar tokens into consecutive windows of at most ``max_tokens``.

    Each window starts with a Bar followed by the time signature in force (inserted when the
    window starts mid-piece). A single bar longer than ``max_tokens`` is cut off.
    """
    bars = []
    cur_ts = None
    start = 0
    for i in range(1, len(tokens) + 1):
        if i == len(tokens) or tokens[i] == bar_id:
            bars.append(tokens[start:i])
            start = i
    out, cur = [], []
    for bar in bars:
        ts_here = next((t for t in bar[:2] if t in timesig_ids), None)
        if ts_here is not None:
            cur_ts = ts_here
        if not cur:
            if ts_here is None and cur_ts is not None and bar and bar[0] == bar_id:
                bar = [bar[0], cur_ts] + bar[1:]
            cur = bar[:max_tokens]
        elif len(cur) + len(bar) <= max_tokens:
            cur = cur + bar
        else:
            out.append(cur)
            if len(out) >= max_windows:
                return out
            if ts_here is None and cur_ts is not None and bar and bar[0] == bar_id:
                bar = [bar[0], cur_ts] + bar[1:]
            cur = bar[:max_tokens]
    if cur and len(out) < max_windows:
        out.append(cur)
    return out


# ================================================================ build
def build(preset: str, data_dir: str | os.PathLike = "data", workers: int | None = None, force: bool = False,
          extra_files: list[str | os.PathLike] | None = None, quiet: bool = False) -> Path:
    """Build (or reuse) ``<data_dir>/<preset>/``; returns that folder."""
    from tqdm import tqdm

    from divcfg.provenance import provenance, write_json_atomic

    if preset not in PRESETS:
        raise UserError(f"unknown preset '{preset}': choose one of {', '.join(PRESETS)}")
    out_dir = Path(data_dir) / preset
    spec = PRESETS[preset]
    files = preset_files(preset)
    root = corpus_root()
    jobs = [(c, rel, str(root / rel)) for c, rel in files]
    for extra in extra_files or []:
        p = Path(extra).resolve()
        jobs.append(("extra", f"extra/{p.name}", str(p)))
    global _TOKENIZER
    tok = _TOKENIZER = _TOKENIZER or tk.make_tokenizer()  # forked workers inherit it
    config = {
        "pipeline_version": PIPELINE_VERSION, "preset": preset, "max_tokens": spec["max_tokens"],
        "long_pieces": spec["long"], "max_windows": spec["max_windows"], "min_notes": MIN_NOTES,
        "split_bounds_per_mille": list(SPLIT_BOUNDS), "repeats": "not expanded",
        "tokenizer": {"pitch_range": list(tk.PITCH_RANGE), "beat_res": {f"{a}-{b}": r for (a, b), r in tk.BEAT_RES.items()},
                      "time_signature_range": tk.TIME_SIGNATURE_RANGE, "vocab_size": len(tok)},
        "inputs": [rel for _, rel, _ in jobs], "music21_corpus": str(root),
    }
    manifest_path = out_dir / "manifest.json"
    if manifest_path.exists() and not force:
        try:
            old = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        if json.loads(json.dumps(old.get("config"))) == json.loads(json.dumps(config)):
            if not quiet:
                print(f"data cache up to date: {out_dir} (use --force to rebuild)")
            return out_dir
    if workers is None or workers <= 0:
        workers = os.cpu_count() or 1
    t0 = time.time()
    jobs.sort(key=lambda j: -(os.path.getsize(j[2]) if os.path.exists(j[2]) else 0))
    results = []
    bar = tqdm(total=len(jobs), desc=f"parsing {preset}", unit="file", disable=quiet, file=sys.stderr,
               mininterval=0.5 if sys.stderr.isatty() else 15)
    if workers == 1:
        for job in jobs:
            results.append(parse_file(job))
            bar.update(1)
    else:
        import multiprocessing as mp
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=mp.get_context("fork")) as ex:
            futs = {ex.submit(parse_file, job): job for job in jobs}
            for fut in as_completed(futs):
                try:
                    results.append(fut.result())
                except Exception as e:  # noqa: BLE001 - a crashed worker loses one file, not the run
                    results.append({"rel": futs[fut][1], "pieces": [], "failures": {},
                                    "file_error": f"worker_error: {type(e).__name__}: {e}"[:200]})
                bar.update(1)
    bar.close()
    parse_s = time.time() - t0

    # ---- gather in deterministic order
    results.sort(key=lambda r: r["rel"])
    failures: dict[str, int] = {}
    failure_details: dict[str, int] = {}
    file_errors = {}
    seen_content = set()
    bar_id = tok["Bar_None"]
    timesig_ids = {i for t, i in tok.vocab.items() if t.startswith("TimeSig_")}
    rows = {s: [] for s in SPLITS}
    for r in results:
        if r["file_error"]:
            file_errors[r["rel"]] = r["file_error"]
        for cause, n in r["failures"].items():  # "unsupported_meter:9/16" -> cause + detail
            base = cause.split(":", 1)[0]
            failures[base] = failures.get(base, 0) + n
            if ":" in cause:
                failure_details[cause] = failure_details.get(cause, 0) + n
        for p in r["pieces"]:
            if p["content_hash"] in seen_content:
                failures["duplicate"] = failures.get("duplicate", 0) + 1
                continue
            seen_content.add(p["content_hash"])
            toks = p["tokens"]
            if len(toks) > spec["max_tokens"]:
                if spec["long"] == "drop":
                    failures["too_long"] = failures.get("too_long", 0) + 1
                    continue
                parts = windows(toks, bar_id, timesig_ids, spec["max_tokens"], spec["max_windows"])
            else:
                parts = [toks]
            split = split_of(split_key(p))
            for w, wt in enumerate(parts):
                meta = dict(p["meta"])
                pid = p["id"] if len(parts) == 1 else f"{p['id']}@{w}"
                if len(parts) > 1:
                    meta["window"] = w
                    meta["n_bars"] = sum(1 for t in wt if t == bar_id)
                    meta["n_notes"] = sum(1 for t in wt if tok[t].startswith("Pitch_"))
                rows[split].append({"id": pid, "collection": p["collection"],
                                    "captions": cap.captions(meta, pid), "meta": meta, "tokens": wt})

    # ---- write
    tmp_dir = out_dir.with_name(out_dir.name + ".tmp")
    if tmp_dir.exists():
        shutil.rmtree(tmp_dir)
    tmp_dir.mkdir(parents=True)
    for s in SPLITS:
        with open(tmp_dir / f"{s}.jsonl", "w") as f:
            for row in rows[s]:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tk.save_tokenizer(tok, tmp_dir)
    per_coll: dict[str, dict[str, int]] = {}
    for s in SPLITS:
        for row in rows[s]:
            per_coll.setdefault(row["collection"], {x: 0 for x in SPLITS})[s] += 1
    manifest = {
        "preset": preset, "config": config,
        "counts": {s: len(rows[s]) for s in SPLITS},
        "counts_per_collection": dict(sorted(per_coll.items())),
        "tokens": {s: sum(len(r["tokens"]) for r in rows[s]) for s in SPLITS},
        "max_piece_tokens": max((len(r["tokens"]) for s in SPLITS for r in rows[s]), default=0),
        "vocab_size": len(tok),
        "failures": dict(sorted(failures.items())),
        "failure_details": dict(sorted(failure_details.items(), key=lambda kv: -kv[1])),
        "file_errors": file_errors,
        "n_files": len(jobs), "workers": workers,
        "elapsed_s": {"parse": round(parse_s, 1), "total": round(time.time() - t0, 1)},
        "provenance": provenance(None, command=f"divcfg data --preset {preset}"),
    }
    write_json_atomic(tmp_dir / "manifest.json", manifest)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp_dir, out_dir)
    if not quiet:
        print_summary(manifest, out_dir)
    return out_dir


def print_summary(m: dict, out_dir: Path) -> None:
    c, t = m["counts"], m["tokens"]
    print(f"wrote {out_dir}: " + ", ".join(f"{s} {c[s]} pieces / {t[s]:,} tokens" for s in SPLITS)
          + f" (vocab {m['vocab_size']}, {m['elapsed_s']['total']:.0f} s, {m['workers']} workers)")
    print("  per collection: " + ", ".join(f"{k} {sum(v.values())}" for k, v in m["counts_per_collection"].items()))
    if m["failures"]:
        print("  skipped pieces: " + ", ".join(f"{k} {v}" for k, v in m["failures"].items()))
    for rel, why in m["file_errors"].items():
        print(f"  unreadable file {rel}: {why}")


def load_split(data_dir: str | os.PathLike, split: str) -> list[dict]:
    """The rows of ``<data_dir>/<split>.jsonl`` (split in train/val/test)."""
    if split not in SPLITS:
        raise UserError(f"unknown split '{split}': choose one of {', '.join(SPLITS)}")
    path = Path(data_dir) / f"{split}.jsonl"
    if not path.exists():
        raise UserError(f"no data at '{path}': run `divcfg data --preset small` (or the preset you meant) first")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def load_manifest(data_dir: str | os.PathLike) -> dict:
    path = Path(data_dir) / "manifest.json"
    if not path.exists():
        raise UserError(f"no manifest at '{path}': run `divcfg data` first")
    return json.loads(path.read_text())


# ================================================================ CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=list(PRESETS), default="small",
                        help="tiny: ~200 tunes for tests; small: short folk tunes (<=512 tokens); "
                             "full: every work that parses, long ones windowed at bar lines (default: small)")
    parser.add_argument("--data-dir", default="data", help="root folder of the data caches (default: data)")
    from divcfg.config import arg_type
    parser.add_argument("--workers", type=arg_type(int, ge=0), default=0, help="parallel parser processes (default: CPU count)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the cache is up to date")
    parser.add_argument("--extra-file", action="append", default=[], help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> None:
    for f in args.extra_file:
        if not Path(f).exists():
            raise UserError(f"extra input '{f}' does not exist: give an existing file")
    build(args.preset, args.data_dir, workers=args.workers or None, force=args.force, extra_files=args.extra_file)
