"""``divcfg report RUN``: the command line of the report (:func:`divcfg.report.page.render_report`)."""

from __future__ import annotations

from pathlib import Path

from divcfg.errors import UserError


def add_arguments(parser) -> None:
    parser.add_argument("run", help="evaluation run folder (written by `divcfg evaluate --out RUN`)")
    from divcfg.config import arg_type
    parser.add_argument("--prompts", type=arg_type(int, ge=1), default=3, help="prompts shown in the sample section")
    parser.add_argument("--generations", type=arg_type(int, ge=1), default=2, help="generations shown per system and prompt")
    parser.add_argument("--training-log", action="append", default=[], metavar="NAME=PATH",
                        help="a fine-tuning metrics.jsonl to plot (repeatable), e.g. β=15=runs/small/ft15/metrics.jsonl")
    parser.add_argument("--systems", default="", help="comma-separated system names for the sample section "
                                                      "(default: all), e.g. base,cfg_g3,distilled,merge_l0.5")
    parser.add_argument("--no-audio", action="store_true",
                        help="skip audio players (music: WAV rendering; MIDI and piano rolls only)")


def run(args) -> None:
    from divcfg.report.page import render_report

    logs = {}
    for item in args.training_log:
        name, sep, path = item.rpartition("=")
        if not sep or not name:
            raise UserError(f"--training-log expects NAME=PATH, got {item!r}")
        if not Path(path).exists():
            raise UserError(f"training log '{path}' not found: point at a fine-tuning run's metrics.jsonl")
        logs[name] = path
    out = render_report(args.run, n_prompts=args.prompts, n_generations=args.generations, training_logs=logs,
                        audio=not args.no_audio, systems=[x.strip() for x in args.systems.split(",") if x.strip()] or None)
    print(f"wrote {out}")
