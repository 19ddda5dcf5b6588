"""Save one (layer, dim) cell of the layer x dim grid as a sentence-transformers folder.

    python recipes/export_slice.py --model_name_or_path outputs/ese --layer 4 --dim 128 --output_dir outputs/ese-l4-d128

The folder's transformer keeps only the first ``--layer`` layers (the rest are dropped from the weights, so it
runs faster) and stores ``truncate_dim`` = ``--dim``: plain ``SentenceTransformer(output_dir)`` encodes exactly
as the grid cell was scored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import AutoConfig

from ese_trainer.config.cli import run_cli
from ese_trainer.config.parsing import ConfigError, parse_config
from ese_trainer.hub_models import ModelNotFoundError, resolve_model_path, work_offline_if_hub_unreachable
from ese_trainer.modeling.pooling import check_pooling
from ese_trainer.modeling.slicing import check_dims, check_layers
from ese_trainer.release.export import export_slice, saved_pooling

PROG = "recipes/export_slice.py"


@dataclass
class ExportSliceArguments:
    model_name_or_path: str = field(metadata={"help": "Hub id or local folder (e.g. a training output folder)."})
    layer: int = field(metadata={"help": "Keep transformer layers 1..layer."})
    dim: int = field(metadata={"help": "Keep the first dim dims of the embedding (ST truncate_dim)."})
    output_dir: str = field(metadata={"help": "Folder to write the sentence-transformers model to."})
    pooling: str | None = field(default=None, metadata={"help": "Default: the folder's saved pooling, else mean."})
    max_seq_length: int = field(default=128, metadata={"help": "Truncation length in tokens."})

    def __post_init__(self) -> None:
        if self.pooling is not None:
            check_pooling(self.pooling)


ARGUMENT_GROUPS = (ExportSliceArguments,)


def run(argv: list[str]) -> str:
    (args,) = parse_config(argv, ARGUMENT_GROUPS, prog=PROG, description=__doc__)
    work_offline_if_hub_unreachable()
    model_path = resolve_model_path(args.model_name_or_path)
    config = AutoConfig.from_pretrained(model_path, trust_remote_code=True)
    try:  # before loading any weights
        check_layers([args.layer], config.num_hidden_layers)
        check_dims([args.dim], config.hidden_size)
    except ValueError as error:
        raise ConfigError(f"command line: {error}") from None
    pooling = args.pooling or saved_pooling(model_path) or "mean"
    export_slice(model_path, None, args.output_dir, pooling, args.layer, args.dim, args.max_seq_length)
    print(f"wrote {args.output_dir}: layers 1..{args.layer} of {config.num_hidden_layers}, first {args.dim} of "
          f"{config.hidden_size} dims, {pooling} pooling")
    return args.output_dir


if __name__ == "__main__":
    run_cli(run, (ModelNotFoundError,))
