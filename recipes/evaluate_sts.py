"""Score a model on the STS suite: cosine Spearman x100, with the model's own tokenizer.

    python recipes/evaluate_sts.py --model_name_or_path outputs/smoke --sts_data_dir ../shared/data/senteval

STS12–16 in SentEval's "all" setting, STS-B test and SICK-R test, and their average; writes JSON and a
Markdown table next to each other (``--output_file``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoModel, AutoTokenizer

from ese_trainer.cli import run_cli
from ese_trainer.config import parse_config
from ese_trainer.data import STS_TASKS, DataError, load_sts_task
from ese_trainer.evaluation import evaluate_sts, markdown_table
from ese_trainer.export import saved_pooling
from ese_trainer.hub_models import ModelNotFoundError, resolve_model_path
from ese_trainer.pooling import check_pooling
from ese_trainer.run_io import save_json


@dataclass
class EvaluationArguments:
    model_name_or_path: str = field(metadata={"help": "Hub id or local folder (e.g. a training output folder)."})
    pooling: str | None = field(default=None, metadata={"help": "Default: the folder's saved pooling, else mean."})
    sts_data_dir: str | None = field(default=None, metadata={"help": "SentEval data folder; unset: Hub datasets."})
    sts_tasks: list[str] = field(default_factory=lambda: list(STS_TASKS), metadata={"help": "Tasks to run."})
    max_seq_length: int = field(default=128, metadata={"help": "Truncation length in tokens."})
    batch_size: int = field(default=128, metadata={"help": "Encoding batch size."})
    device: str = field(default="cpu", metadata={"help": "cpu, cuda, cuda:1, ..."})
    output_file: str | None = field(default=None, metadata={"help": "JSON path; the .md table is written beside."})

    def __post_init__(self) -> None:
        unknown = [task for task in self.sts_tasks if task not in STS_TASKS]
        if unknown:
            raise ValueError(f"sts_tasks: unknown task(s) {unknown}; choose from {list(STS_TASKS)}")
        if self.pooling is not None:
            check_pooling(self.pooling)


def run(argv: list[str]) -> dict[str, float]:
    (args,) = parse_config(argv, (EvaluationArguments,))
    model_path = resolve_model_path(args.model_name_or_path)
    pooling = args.pooling or saved_pooling(model_path) or "mean"
    tasks = {task: load_sts_task(task, args.sts_data_dir) for task in args.sts_tasks}
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModel.from_pretrained(model_path).to(args.device).eval()
    results = evaluate_sts(model, tokenizer, tasks, pooling, args.max_seq_length, args.batch_size)
    table = markdown_table({args.model_name_or_path: results})
    print(f"\nSTS (cosine Spearman x100, {pooling} pooling)\n{table}")
    if args.output_file:
        output = Path(args.output_file)
        output.parent.mkdir(parents=True, exist_ok=True)
        save_json(output, {"model": args.model_name_or_path, "pooling": pooling, "metric": "cosine Spearman x100",
                           "results": results})
        output.with_suffix(".md").write_text(table + "\n")
    return results


if __name__ == "__main__":
    run_cli(run, (DataError, ModelNotFoundError))
