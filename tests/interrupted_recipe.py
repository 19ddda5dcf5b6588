"""The recipe's command line (``recipes/train_nli.py``: its ``run`` under ``run_cli``), killed by SIGKILL at the end
of an optimizer step: an interruption with no clean-up, at a step the test chooses. Run by test_resume_recipe.py:

    python tests/interrupted_recipe.py KILL_AT_STEP <the recipe's arguments>
"""

import os
import signal
import sys

from transformers import TrainerCallback

from ese_trainer.config.cli import run_cli
from recipes.train_nli import EXPECTED_ERRORS, run


class KillAtStep(TrainerCallback):
    """Kills the process when optimizer step ``step`` has ended (before any checkpoint of that step is saved)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    kill_at = int(sys.argv.pop(1))
    run_cli(lambda argv: run(argv, callbacks=[KillAtStep(kill_at)]), EXPECTED_ERRORS)
