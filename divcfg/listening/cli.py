"""`divcfg listen RUN`: a blinded listening study over an evaluation run's generations.

    divcfg listen runs/demo/eval                 # render clips, design the study, serve it on 127.0.0.1
    divcfg listen runs/demo/eval --export        # answers → <run>/listening/answers.csv
    divcfg listen runs/demo/eval --analyse       # → <run>/listening/analysis.json + the report's section

The study lives in ``<run>/listening/``: ``audio/`` (WAV clips), ``manifest.json``, ``study.json``
(the frozen design and trials) and ``answers.sqlite``. Rerunning with the same design resumes the
study; a different design is refused once answers exist (they would no longer match the trials).
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
from pathlib import Path

from divcfg.config import add_config_arguments, arg_type, field, resolve_config
from divcfg.errors import UserError
from divcfg.listening.design import StudyConfig, build_study, default_systems


@dataclasses.dataclass
class ListenConfig(StudyConfig):
    host: str = field("127.0.0.1", "address to listen on; a non-loopback address is accepted only from the "
                                   "command line (--host), with a warning")
    port: int = field(8765, "TCP port (0 = any free port)", ge=0, le=65535)


def add_arguments(parser) -> None:
    parser.add_argument("run", type=Path, help="evaluation run folder (written by `divcfg evaluate --out RUN`)")
    parser.add_argument("--token", default=None,
                        help="require this access token in the study's URL (`auto` = a random one; default: "
                             "none on loopback, a random one on another address)")
    parser.add_argument("--prepare-only", action="store_true",
                        help="render the clips and write the study design, then exit without serving")
    parser.add_argument("--export", nargs="?", const="", default=None, metavar="CSV",
                        help="write the answers (unblinded: systems, prompts) to CSV (default "
                             "<run>/listening/answers.csv) and exit")
    parser.add_argument("--analyse", "--analyze", dest="analyse", action="store_true",
                        help="per-system scores and diversity win rates with bootstrap intervals → "
                             "<run>/listening/analysis.json, and the report's 'Human evaluation' section")
    parser.add_argument("--bootstrap", type=arg_type(int, ge=100), default=2000,
                        help="bootstrap resamples of --analyse (default: 2000; >= 100)")
    add_config_arguments(parser, ListenConfig)


def study_dir_of(run: Path) -> Path:
    return run / "listening"


def prepare(run: Path, cfg: StudyConfig, progress: bool = True) -> Path:
    """Render the clips, build the design and write ``study.json`` (kept when it is unchanged)."""
    from divcfg.listening.media import load_run, prepare_manifest
    from divcfg.listening.store import Store

    results, _ = load_run(run)
    systems = cfg.system_list() or default_systems(results)
    if len(set(systems)) != len(systems):
        raise UserError(f"--systems lists a system twice ({','.join(systems)}): name each once")
    manifest = prepare_manifest(run, systems, cfg.prompts, cfg.generations, cfg.clip_beats, cfg.sample_rate,
                                progress=progress)
    design_cfg = StudyConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(StudyConfig)})
    study = build_study(manifest, design_cfg, systems)
    out = study_dir_of(run)
    study_file = out / "study.json"
    if study_file.is_file():
        old = json.loads(study_file.read_text())
        if old.get("design_key") == study["design_key"]:
            return out
        n = Store(out / "answers.sqlite").count_answers() if (out / "answers.sqlite").exists() else 0
        if n:
            raise UserError(f"'{study_file}' holds a study with another design and {n} answers: rerun with its "
                            f"settings ({_flags(old['design'], old['systems'])}), or move {out} aside "
                            f"to start a new study")
    from divcfg.provenance import provenance

    study["provenance"] = provenance(cfg.seed, stage="listen")
    tmp = study_file.with_name("study.json.tmp")
    tmp.write_text(json.dumps(study, indent=1, ensure_ascii=False))
    os.replace(tmp, study_file)
    return out


def _flags(design: dict, systems: list[str]) -> str:
    parts = [f"--systems {','.join(systems)}"]
    parts += [f"--{k.replace('_', '-')} {v}" for k, v in design.items() if k != "systems"]
    return " ".join(parts)


def _require_study(run: Path) -> Path:
    out = study_dir_of(run)
    if not (out / "study.json").is_file():
        raise UserError(f"no listening study in '{out}': start one with `divcfg listen {run}`")
    return out


def analyse_run(run: Path, n_boot: int = 2000, seed: int = 0) -> dict:
    """Write ``<run>/listening/analysis.json`` and update ``<run>/report.html`` when it exists."""
    from divcfg.listening.analysis import add_section_to_page, analyse

    out = _require_study(run)
    analysis = analyse(out, n_boot=n_boot, seed=seed)
    tmp = out / "analysis.json.tmp"
    tmp.write_text(json.dumps(analysis, indent=1, ensure_ascii=False))
    os.replace(tmp, out / "analysis.json")
    report = run / "report.html"
    if report.is_file():
        page = add_section_to_page(report.read_text(encoding="utf-8"), run)
        tmp = report.with_name("report.html.tmp")
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, report)
    return analysis


def run(args) -> None:
    run_dir: Path = args.run
    if not run_dir.is_dir():
        raise UserError(f"run folder '{run_dir}' not found: pass a folder written by `divcfg evaluate --out`")
    if args.export is not None or args.analyse:
        if args.export is not None:
            from divcfg.listening.analysis import export_csv

            out = _require_study(run_dir)
            path = Path(args.export) if args.export else out / "answers.csv"
            print(f"wrote {export_csv(out, path)} answers to {path}")
        if args.analyse:
            a = analyse_run(run_dir, n_boot=args.bootstrap)
            print(f"{a['answers']} answers from {a['raters']} raters → {study_dir_of(run_dir) / 'analysis.json'}")
            print(a["merge_vs_cfg"]["sentence"])
        return
    cfg = resolve_config(ListenConfig, args)
    from divcfg.listening.app import check_host, create_app, is_loopback, serve

    check_host(cfg.host, explicit=args.host is not None)
    token = args.token
    if token == "auto" or (token is None and not is_loopback(cfg.host)):
        token = secrets.token_urlsafe(16)
    if token is not None and not (8 <= len(token) <= 128 and token.replace("-", "").replace("_", "").isalnum()):
        raise UserError("--token must be 8-128 letters, digits, - or _ (or `auto`)")
    out = prepare(run_dir, cfg)
    print(f"study ready in {out} ({len(json.loads((out / 'study.json').read_text())['trials'])} trials)")
    if args.prepare_only:
        return
    app = create_app(out, token=token)
    shown = "localhost" if is_loopback(cfg.host) else (f"[{cfg.host}]" if ":" in cfg.host else cfg.host)
    query = f"?token={token}&rater=" if token else "?rater="

    def announce(port: int) -> None:
        print(f"listening study: http://{shown}:{port}/{query}<name>  (one name per rater; Ctrl-C stops; "
              f"answers are kept in {out / 'answers.sqlite'})", flush=True)

    serve(app, cfg.host, cfg.port, announce)
