"""The music-specific part of the listening study: an evaluation run's token sequences → WAV clips
and the manifest the (domain-agnostic) study app reads.

``<run>/listening/manifest.json``::

    {"prompts": {"<prompt index>": "<prompt text>"},
     "systems": {"<name>": {"label": ..., "family": ...}},
     "clips": [{"id": "<clip id>", "file": "audio/<clip id>.wav", "system": ..., "prompt_index": ...,
                "generation": ..., "empty": bool}, ...]}   # one entry per (system, prompt, generation)

A clip id is a hash of the generation's tokens and the clip settings, so identical generations of two
systems share one file and a file name never reveals its system. A generation with no notes (or
that does not decode) becomes two seconds of silence, flagged ``empty``: raters hear it and rate it,
rather than it silently leaving the study. Everything else in ``divcfg.listening`` only reads files
listed in the manifest; :func:`render_clip` is the one place that knows about music.
"""

from __future__ import annotations

import hashlib
import json
import os
import wave
from pathlib import Path

from divcfg.errors import UserError

SILENCE_SECONDS = 2.0


def tokenizer_for(results: dict):
    """The run's tokenizer: a system checkpoint's ``tokenizer.json``, else the data folder's."""
    from divcfg.music.tokenizer import load_tokenizer

    for r in results["systems"]:
        f = Path(r.get("checkpoint", "")) / "tokenizer.json"
        if r.get("checkpoint") and f.exists():
            return load_tokenizer(f)
    data_dir = (results.get("config") or {}).get("data_dir")
    if not data_dir or not Path(data_dir).exists():
        raise UserError("cannot find the run's tokenizer (no checkpoint tokenizer.json, no data_dir): "
                        "rerun `divcfg evaluate` on this machine")
    return load_tokenizer(data_dir)


def _silence(path: Path, sample_rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(b"\0\0" * int(SILENCE_SECONDS * sample_rate))


def render_clip(tokenizer, tokens: list[int], path: Path, beats: int, sample_rate: int) -> bool:
    """Write the first ``beats`` quarter notes of ``tokens`` to ``path`` (WAV); silence when the
    generation has no notes. Returns True when the clip is empty (silence)."""
    from divcfg.music.pianoroll import score_notes
    from divcfg.music.render import write_wav
    from divcfg.music.tokenizer import tokens_to_score

    score = tokens_to_score(tokenizer, tokens)
    if score is None or len(score_notes(score)) == 0:
        _silence(path, sample_rate)
        return True
    clip = score.clip(0, beats * score.ticks_per_quarter, clip_end=True)
    if len(score_notes(clip)) == 0:
        _silence(path, sample_rate)
        return True
    tmp = path.with_name(path.name + ".tmp.wav")
    if not write_wav(clip, tmp, sample_rate=sample_rate):
        raise UserError("no General MIDI soundfont: a listening study needs audio (install one: "
                        "`sudo apt-get install timgm6mb-soundfont`, or set DIVCFG_SOUNDFONT=/path/to.sf2)")
    os.replace(tmp, path)
    return False


def load_run(run_dir: Path) -> tuple[dict, list[dict]]:
    f = run_dir / "results.json"
    if not f.is_file():
        raise UserError(f"no results.json in '{run_dir}': run `divcfg evaluate --out {run_dir}` first")
    try:
        results = json.loads(f.read_text())
        samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        raise UserError(f"no samples.jsonl in '{run_dir}': rerun `divcfg evaluate --out {run_dir}`") from None
    except json.JSONDecodeError as e:
        raise UserError(f"'{run_dir}' has a corrupt results.json or samples.jsonl ({e.msg}): "
                        f"rerun `divcfg evaluate`") from None
    domain = results.get("domain", "music")
    if domain != "music":
        raise UserError(f"'{run_dir}' is a {domain!r} run: a listening study needs audio, which only music "
                        f"runs have (their token ids are rendered to WAV)")
    return results, samples


def prepare_manifest(run_dir: str | os.PathLike, systems: list[str], n_prompts: int, generations: int,
                     beats: int, sample_rate: int, progress: bool = True) -> dict:
    """Render (or reuse) the clips of ``systems`` × the first ``n_prompts`` prompts (0 = all) ×
    generations < ``generations`` into ``<run>/listening/audio/`` and write the manifest."""
    from tqdm import tqdm

    run_dir = Path(run_dir)
    results, samples = load_run(run_dir)
    known = {r["name"]: r for r in results["systems"]}
    unknown = [s for s in systems if s not in known]
    if unknown:
        raise UserError(f"unknown system(s) {unknown} in --systems: choose among {', '.join(known)}")
    prompts = results["prompts"][:n_prompts] if n_prompts else results["prompts"]
    wanted = {p["index"] for p in prompts}
    rows = [s for s in samples if s["system"] in systems and s["prompt_index"] in wanted
            and s["generation"] < generations]
    if not rows:
        raise UserError(f"'{run_dir}/samples.jsonl' has no generations of {systems}: rerun `divcfg evaluate`")
    out = run_dir / "listening"
    audio = out / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    tokenizer = None
    clips: list[dict] = []
    empty: dict[str, bool] = {}
    for s in tqdm(rows, desc="rendering clips", unit="clip", disable=not progress):
        key = json.dumps([s["tokens"], beats, sample_rate])
        cid = hashlib.sha1(key.encode()).hexdigest()[:16]
        path = audio / f"{cid}.wav"
        if cid not in empty:
            if path.is_file():
                empty[cid] = _is_silence(path)
            else:
                tokenizer = tokenizer or tokenizer_for(results)
                empty[cid] = render_clip(tokenizer, s["tokens"], path, beats, sample_rate)
        clips.append({"id": cid, "file": f"audio/{cid}.wav", "system": s["system"],
                      "prompt_index": s["prompt_index"], "generation": s["generation"], "empty": empty[cid]})
    manifest = {
        "run": str(run_dir.resolve()), "clip_beats": beats, "sample_rate": sample_rate,
        "prompts": {str(p["index"]): p["text"] for p in prompts},
        "systems": {n: {"label": known[n]["label"], "family": known[n]["family"]} for n in systems},
        "clips": clips,
    }
    _atomic_json(out / "manifest.json", manifest)
    return manifest


def _is_silence(path: Path) -> bool:
    with wave.open(str(path), "rb") as w:
        frames = w.readframes(w.getnframes())
    return not frames.strip(b"\0")


def _atomic_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False))
    os.replace(tmp, path)
