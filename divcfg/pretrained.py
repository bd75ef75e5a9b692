"""The testbed's shipped pretrained checkpoints: the base generator, the diversity embedder E and
the alignment scorer, trained by divcfg's own commands (the exact commands, steps, seed and commit
are in ``MANIFEST.json``) and stored in the package as bf16 safetensors.

The paper starts from a pretrained MusicLM, MuLan and E; the testbed does the same, so that
``divcfg demo`` spends its minutes on the method (students, merges, evaluation).
``divcfg demo --from-scratch`` retrains all three instead.

Integrity: ``MANIFEST.json`` lists the sha256 of every shipped file; :func:`install` checks each
file against it before copying a checkpoint into a run folder, and refuses a damaged one with a
one-line error. bf16 → fp32 happens when a loader copies the tensors into its module
(``load_state_dict`` converts dtypes), so the installed folders are ordinary divcfg checkpoints.

``python -m divcfg.pretrained pack RUN_ROOT`` writes the shipped folder from trained checkpoints
(``RUN_ROOT/{base,embedder,scorer}``); it is how the files in the repository were made.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

from divcfg.checkpoint import CONFIG_FILE, MODEL_FILE, resolve_checkpoint_dir
from divcfg.errors import UserError

SHIPPED_DIR = Path(__file__).parent / "weights" / "music21_small"
MANIFEST = "MANIFEST.json"
COMPONENTS = ("base", "embedder", "scorer")
COPIED = (MODEL_FILE, CONFIG_FILE, "tokenizer.json")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest(root: Path = SHIPPED_DIR) -> dict:
    """The shipped manifest: ``files`` (relative path → sha256), ``commands``, ``provenance``."""
    try:
        return json.loads((root / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        raise UserError(f"the shipped checkpoints in '{root}' have no readable {MANIFEST}: reinstall divcfg, "
                        f"or run `divcfg demo --from-scratch`") from None


def verify(root: Path = SHIPPED_DIR) -> dict:
    """Check every shipped file's sha256 against the manifest; one-line error on a mismatch."""
    man = manifest(root)
    for rel, digest in man["files"].items():
        f = root / rel
        if not f.exists():
            raise UserError(f"shipped file '{f}' is missing: reinstall divcfg, or run `divcfg demo --from-scratch`")
        if sha256(f) != digest:
            raise UserError(f"shipped file '{f}' fails its sha256 check (damaged or changed): reinstall divcfg, "
                            f"or run `divcfg demo --from-scratch`")
    return man


def install(dest: Path, component: str, root: Path = SHIPPED_DIR) -> Path:
    """Copy the verified shipped ``component`` into the checkpoint folder ``dest`` (atomically:
    a temporary folder renamed into place). Returns ``dest``."""
    if component not in COMPONENTS:
        raise UserError(f"unknown shipped component {component!r}: one of {', '.join(COMPONENTS)}")
    verify(root)
    src = root / component
    tmp = dest.with_name(dest.name + ".tmp-install")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for name in COPIED:
        if (src / name).exists():
            shutil.copyfile(src / name, tmp / name)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest


def pack(run_root: Path, out: Path = SHIPPED_DIR, commands: dict[str, str] | None = None) -> dict:
    """Write the shipped folder from trained checkpoints ``run_root/{base,embedder,scorer}``:
    tensors cast to bf16, configs and tokenizers copied, and the manifest with every sha256."""
    import torch
    from safetensors.torch import load_file, save_file

    from divcfg.provenance import provenance
    files, sources = {}, {}
    for comp in COMPONENTS:
        src = resolve_checkpoint_dir(run_root / comp)
        dst = out / comp
        dst.mkdir(parents=True, exist_ok=True)
        state = load_file(str(src / MODEL_FILE))
        save_file({k: (v.to(torch.bfloat16) if v.is_floating_point() else v).contiguous() for k, v in state.items()},
                  str(dst / MODEL_FILE))
        for name in COPIED[1:]:
            if (src / name).exists():
                shutil.copyfile(src / name, dst / name)
        for name in COPIED:
            if (dst / name).exists():
                files[f"{comp}/{name}"] = sha256(dst / name)
        sources[comp] = json.loads((src / CONFIG_FILE).read_text()).get("provenance")
    man = {"files": files, "dtype": "bfloat16", "commands": commands or {}, "trained_with": sources,
           "packed": provenance(0, stage="pack")}
    (out / MANIFEST).write_text(json.dumps(man, indent=2) + "\n")
    return man


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m divcfg.pretrained", description="pack or verify the shipped checkpoints")
    sub = p.add_subparsers(dest="cmd", required=True)
    pk = sub.add_parser("pack")
    pk.add_argument("run_root", type=Path)
    pk.add_argument("--commands", type=Path, help="JSON file: component -> the command that trained it")
    sub.add_parser("verify")
    args = p.parse_args(argv)
    try:
        if args.cmd == "pack":
            cmds = json.loads(args.commands.read_text()) if args.commands else None
            man = pack(args.run_root, commands=cmds)
            print(f"packed {len(man['files'])} files into {SHIPPED_DIR}")
        else:
            verify()
            print(f"{SHIPPED_DIR}: every file matches {MANIFEST}")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
