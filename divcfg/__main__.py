"""``python -m divcfg ...`` (and ``accelerate launch -m divcfg finetune ...``): the ``divcfg`` command."""

import sys

from divcfg.cli import main

if __name__ == "__main__":
    sys.exit(main())
