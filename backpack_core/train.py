"""`python -m backpack_core.train` (or `torchrun ... -m backpack_core.train`): the training command.

The loop and its parts live in `backpack_core/training/` (the loop: `training/trainer.py`); this
module is only the command's stable name.
"""

import sys

from backpack_core.training.trainer import main

if __name__ == "__main__":
    sys.exit(main())
