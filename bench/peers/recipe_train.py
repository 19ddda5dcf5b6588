"""Our recipe as a contender: ``recipes/train_nli.py`` with successive halving's cut (``bench.peers.dev_callback``).

    python -m bench.peers.recipe_train --half_step 112 --keep_at_least 81.2 --record OUT/halving.json \\
        [--dev_metric sts_dev_slices_spearman] -- --config OUT/job.yaml [recipe arguments ...]

The recipe scores STS-B dev inside its Trainer; the cut reads the score the run selects its checkpoint by
(``--dev_metric``, the config's ``metric_for_best_model``). Without ``--keep_at_least`` the run is the recipe's own,
unchanged.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--half_step", type=int, default=0)
    parser.add_argument("--keep_at_least", type=float)
    parser.add_argument("--record", type=Path, required=True, help="where the step of a cut is written")
    parser.add_argument("--dev_metric", default="sts_dev_spearman", help="the run's metric_for_best_model")
    parser.add_argument("recipe_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()

    from bench.peers.dev_callback import HalvingCut, RecipeHalving
    from ese_trainer.config.cli import run_cli
    from recipes.train_nli import EXPECTED_ERRORS, run

    halving = RecipeHalving(HalvingCut(args.half_step, args.keep_at_least), args.record, args.dev_metric)
    sys.argv = [sys.argv[0], *(args.recipe_args[1:] if args.recipe_args[:1] == ["--"] else args.recipe_args)]
    run_cli(lambda argv: run(argv, callbacks=[halving]), EXPECTED_ERRORS)


if __name__ == "__main__":
    main()
