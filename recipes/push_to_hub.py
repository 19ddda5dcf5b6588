"""Push an existing run's model (sentence-transformers folder + model card) to the Hugging Face Hub.

    python recipes/push_to_hub.py --model_dir outputs/smoke --hub_model_id your-name/minilm-nli [--private true]

The card is regenerated from the run's own files first (``--regenerate_card false`` keeps the folder's).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ese_trainer.config.cli import run_cli
from ese_trainer.config.parsing import parse_config
from ese_trainer.release.hub_push import PushError, check_push_ready, push_model_dir
from ese_trainer.release.model_card import write_model_card

PROG = "recipes/push_to_hub.py"


@dataclass
class PushArguments:
    model_dir: str = field(metadata={"help": "Output folder of a training run."})
    hub_model_id: str = field(metadata={"help": "Repository to push to, e.g. your-name/model-name."})
    private: bool | None = field(default=None, metadata={"help": "Create the repository as private."})
    regenerate_card: bool = field(default=True, metadata={"help": "Rewrite README.md from the run's files."})


ARGUMENT_GROUPS = (PushArguments,)


def run(argv: list[str]) -> str:
    (args,) = parse_config(argv, ARGUMENT_GROUPS, prog=PROG, description=__doc__)
    if args.regenerate_card:
        write_model_card(args.model_dir)
    check_push_ready(args.hub_model_id)
    url = push_model_dir(args.model_dir, args.hub_model_id, private=args.private)
    print(f"pushed {args.model_dir} -> {url}")
    return url


if __name__ == "__main__":
    run_cli(run, (PushError, FileNotFoundError))
