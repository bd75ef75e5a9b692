"""The one ``divcfg`` command. Each subcommand lives in its own module, which provides

    add_arguments(parser: argparse.ArgumentParser) -> None
    run(args: argparse.Namespace) -> None

Modules are imported lazily so that ``divcfg --help`` is fast and a broken optional stage
cannot break the others.

Error contract (tested by tests/test_cli_fuzz.py): a run exits 0, or exits 2 and its stderr holds
exactly one line that starts with ``error:`` (naming the problem and the fix) and no traceback.
argparse's usage line is left out of errors (``--help`` prints it); Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from divcfg.config import add_toml_option, apply_toml_defaults
from divcfg.errors import UserError

class OneLineParser(argparse.ArgumentParser):
    """argparse with one-line errors: ``error: <message> (see `divcfg CMD --help`)``, exit 2."""

    def error(self, message: str):
        message = " ".join(message.split())
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


def one_line(message: object) -> str:
    """A message folded onto one line."""
    return " ".join(str(message).split())


# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("divcfg.music.corpus", "build the training set from music21's bundled corpus"),
    "pretrain": ("divcfg.pretrain", "train the text-conditioned base music transformer"),
    "sample": ("divcfg.sample", "sample MIDI/WAV from a checkpoint, with or without CFG"),
    "embedder": ("divcfg.music.judges.diversity_cli", "train/evaluate the diversity embedder E"),
    "scorer": ("divcfg.music.judges.alignment_cli", "train/evaluate the text-music alignment scorer"),
    "finetune": ("divcfg.finetune", "on-policy CFG distillation with a diversity reward"),
    "merge": ("divcfg.merging", "interpolate two checkpoints: (1-lam)*A + lam*B"),
    "evaluate": ("divcfg.evaluation", "quality-diversity evaluation of systems on held-out prompts"),
    "report": ("divcfg.report", "render the HTML report of an evaluation run"),
    "demo": ("divcfg.demo", "the whole pipeline on the embedded music21 testbed"),
    "listen": ("divcfg.listening.cli", "blinded listening study (web app) over an evaluation run; --analyse"),
    "compare-judges": ("divcfg.music.judges.compare", "symbolic vs audio diversity embedder on one evaluation's generations"),
    "select": ("divcfg.selection", "choose the diversity student's reward form and β on validation prompts"),
    "reproduce": ("divcfg.reproduce", "regenerate a published table and figure from nothing, and diff them"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="divcfg", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("divcfg"):
                p.set_defaults(_missing=module_name)
                continue
            raise
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
        for leaf in _leaves(p):
            if "--config" not in leaf._option_string_actions:
                add_toml_option(leaf)  # --config FILE.toml means the same in every command
    return parser


def _leaves(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return [leaf for a in subs for p in a.choices.values() for leaf in _leaves(p)] if subs else [parser]


def _toml_path(argv: list[str]) -> str | None:
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--config="):
            return a.split("=", 1)[1]
    return None


def _leaf_for(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser | None:
    """The (sub)command parser ``argv`` names (``embedder train`` -> its parser), or None."""
    for word in argv:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            break
        if word not in subs[0].choices:
            return None
        parser = subs[0].choices[word]
    return parser


def parse_command(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``; a usage mistake prints one ``error:`` line and exits 2 (SystemExit)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    leaf, toml = _leaf_for(parser, argv), _toml_path(argv)
    if leaf is not None and toml is not None and leaf.get_default("_toml_flags"):
        apply_toml_defaults(leaf, toml)  # before parsing, so that flags on the command line win
    args = parser.parse_args(argv)
    if args.command is None:
        parser.error("no COMMAND given: choose one of " + ", ".join(COMMANDS))
    if getattr(args, "_missing", None):
        parser.error(f"`divcfg {args.command}` is not available in this version")
    return args


def run_command(argv: list[str]) -> None:
    """Run one subcommand in-process; a user mistake raises :class:`UserError` (for callers such as
    ``divcfg demo``, which adds the stage's name to the one line)."""
    args = parse_command(argv)
    args._run(args)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_command(argv)
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    try:
        args._run(args)
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if "resume" in vars(args):
            print("interrupted: the last checkpoint written is kept; rerun with --resume", file=sys.stderr)
        else:
            print(f"interrupted: `divcfg {args.command}` stopped; rerun the same command", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
