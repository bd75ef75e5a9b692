"""One data-parallel process of ``divcfg finetune --num-processes N``:
``python -m divcfg.finetune.worker CONFIG.json [--resume] [--no-progress]`` (started by
``divcfg.finetune.distributed.launch`` under ``torch.distributed.run``)."""

import json
import sys
from pathlib import Path

from divcfg.errors import UserError


def main(argv: list[str]) -> int:
    from divcfg.finetune.config import FinetuneConfig
    from divcfg.finetune.loop import finetune
    cfg = FinetuneConfig(**json.loads(Path(argv[0]).read_text()))
    try:
        finetune(cfg, resume="--resume" in argv, progress="--no-progress" not in argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
