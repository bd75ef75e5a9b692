"""`divcfg data`: the training set built from the scores bundled with music21.

Pipeline (one worker process per input file, files largest first; steps 1-3 are
`divcfg.music.sources`, the split is `divcfg.music.dataset`, which also reads the result back):

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
import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from divcfg.errors import UserError
from divcfg.music import captions as cap
from divcfg.music import tokenizer as tk
from divcfg.music.dataset import SPLIT_BOUNDS, SPLITS, split_key, split_of
from divcfg.music.descriptors import describe
from divcfg.music.extract import MIN_NOTES
from divcfg.music.pianoroll import score_notes
from divcfg.music.sources import (COLLECTIONS, EXCLUDE, PARSEABLE, corpus_root, parse_file,
                                  worker_tokenizer)

PIPELINE_VERSION = 5
CAPTION_STYLES = ("standard", "rich")

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


# ================================================================ windows
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
          extra_files: list[str | os.PathLike] | None = None, quiet: bool = False, captions: str = "standard") -> Path:
    """Build (or reuse) ``<data_dir>/<preset>/`` (``<preset>_rich/`` for rich captions); returns that folder.

    ``captions="rich"``: every piece's meta gains ``descriptors`` (`divcfg.music.descriptors`: register,
    range, motion, steps where they stand out) and its captions name them; pieces, tokens and splits
    are those of the standard build."""
    from tqdm import tqdm

    from divcfg.provenance import provenance, write_json_atomic

    if preset not in PRESETS:
        raise UserError(f"unknown preset '{preset}': choose one of {', '.join(PRESETS)}")
    if captions not in CAPTION_STYLES:
        raise UserError(f"unknown caption style '{captions}': choose one of {', '.join(CAPTION_STYLES)}")
    out_dir = Path(data_dir) / (preset if captions == "standard" else f"{preset}_{captions}")
    spec = PRESETS[preset]
    files = preset_files(preset)
    root = corpus_root()
    jobs = [(c, rel, str(root / rel)) for c, rel in files]
    for extra in extra_files or []:
        p = Path(extra).resolve()
        jobs.append(("extra", f"extra/{p.name}", str(p)))
    tok = worker_tokenizer()  # forked workers inherit it
    config = {
        "pipeline_version": PIPELINE_VERSION, "preset": preset, "max_tokens": spec["max_tokens"],
        "long_pieces": spec["long"], "max_windows": spec["max_windows"], "min_notes": MIN_NOTES,
        "split_bounds_per_mille": list(SPLIT_BOUNDS), "repeats": "not expanded",
        "tokenizer": {"pitch_range": list(tk.PITCH_RANGE), "beat_res": {f"{a}-{b}": r for (a, b), r in tk.BEAT_RES.items()},
                      "time_signature_range": tk.TIME_SIGNATURE_RANGE, "vocab_size": len(tok)},
        "inputs": [rel for _, rel, _ in jobs], "music21_corpus": str(root),
    }
    if captions != "standard":  # the standard build's config (and so its cache) stays as it was
        config["captions"] = captions
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
                if captions == "rich":
                    meta["descriptors"] = describe(score_notes(tk.tokens_to_score(tok, wt)))
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
        "provenance": provenance(None, command=f"divcfg data --preset {preset}"
                                 + ("" if captions == "standard" else f" --captions {captions}")),
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


# ================================================================ CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=list(PRESETS), default="small",
                        help="tiny: ~200 tunes for tests; small: short folk tunes (<=512 tokens); "
                             "full: every work that parses, long ones windowed at bar lines (default: small)")
    parser.add_argument("--data-dir", default="data", help="root folder of the data caches (default: data)")
    from divcfg.config import arg_type
    parser.add_argument("--workers", type=arg_type(int, ge=0), default=0, help="parallel parser processes (default: CPU count)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the cache is up to date")
    parser.add_argument("--captions", choices=CAPTION_STYLES, default="standard",
                        help="rich: captions also name each piece's register, range, motion and melodic steps "
                             "where they stand out (divcfg.music.descriptors), written to DATA_DIR/PRESET_rich "
                             "(default: standard)")
    parser.add_argument("--extra-file", action="append", default=[], help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> None:
    for f in args.extra_file:
        if not Path(f).exists():
            raise UserError(f"extra input '{f}' does not exist: give an existing file")
    build(args.preset, args.data_dir, workers=args.workers or None, force=args.force, extra_files=args.extra_file,
          captions=args.captions)
