"""The listening study's clips: an evaluation run's generations → WAV clips (rendered by the run's
domain, ``render_clip``: the music domain's ``divcfg.domains.music_media``) and the manifest the
(domain-agnostic) study app reads.

``<run>/listening/manifest.json``::

    {"prompts": {"<prompt index>": "<prompt text>"},
     "systems": {"<name>": {"label": ..., "family": ...}},
     "clips": [{"id": "<clip id>", "file": "audio/<clip id>.wav", "system": ..., "prompt_index": ...,
                "generation": ..., "empty": bool}, ...]}   # one entry per (system, prompt, generation)

A clip id is a hash of the generation's tokens and the clip settings, so identical generations of two
systems share one file and a file name never reveals its system. A generation with no notes (or
that does not decode) becomes two seconds of silence, flagged ``empty``: raters hear it and rate it,
rather than it silently leaving the study. Everything else in ``divcfg.listening`` only reads files
listed in the manifest; the domain's ``render_clip`` is the one place that knows about music.
"""

from __future__ import annotations

import hashlib
import json
import os
import wave
from pathlib import Path

from divcfg.errors import UserError


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
    if not _renders_clips(domain):
        raise UserError(f"'{run_dir}' is a {domain!r} run: a listening study needs audio, which only music "
                        f"runs have (their token ids are rendered to WAV)")
    return results, samples


def _renders_clips(domain: str) -> bool:
    """Whether the run's domain renders its generations to audio clips (``render_clip``)."""
    from divcfg.domains.base import domain_named
    try:
        return hasattr(domain_named(domain), "render_clip")
    except UserError:   # a domain this version does not know
        return False


def prepare_manifest(run_dir: str | os.PathLike, systems: list[str], n_prompts: int, generations: int,
                     beats: int, sample_rate: int, progress: bool = True) -> dict:
    """Render (or reuse) the clips of ``systems`` × the first ``n_prompts`` prompts (0 = all) ×
    generations < ``generations`` into ``<run>/listening/audio/`` and write the manifest."""
    from tqdm import tqdm

    from divcfg.domains.base import domain_named

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
    domain = domain_named(results.get("domain", "music"))
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
                tokenizer = tokenizer or domain.run_tokenizer(results)
                empty[cid] = domain.render_clip(tokenizer, s["tokens"], path, beats, sample_rate)
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
