"""Score a model on the STS suite: cosine Spearman x100, with the model's own tokenizer.

    python recipes/evaluate_sts.py --model_name_or_path outputs/smoke

STS12–16 in SentEval's "all" setting, STS-B test and SICK-R test, and their average; writes JSON and a
Markdown table next to each other (``--output_file``).

With ``--layers`` and/or ``--dims`` it scores ESE's layer x dimension grid instead (every transformer layer's
pooled output, cut to each leading dim count), times encoding with the model truncated to each layer, and
writes ``<stem>.json``, ``<stem>.md`` and a ``<stem>.png`` heatmap for ``--output_file <stem>.json``:

    python recipes/evaluate_sts.py --model_name_or_path outputs/ese --sts_tasks STSBenchmark \
        --layers all --dims 32 64 128 256 384 --output_file outputs/ese/grid.json
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoConfig, AutoModel, AutoTokenizer

from ese_trainer.config.cli import run_cli
from ese_trainer.config.parsing import ConfigError, parse_config
from ese_trainer.data import STS_TASKS, DataError, load_sts_task
from ese_trainer.data.sts import EMBEDDED_DATA_DIR, HUB_STS_SOURCE
from ese_trainer.evaluation.layer_grid import (
    ENCODE_SECONDS_KEY,
    encode_time_per_depth,
    evaluate_layer_dim_grid,
    grid_markdown,
)
from ese_trainer.evaluation.sts import evaluate_sts
from ese_trainer.evaluation.tables import markdown_table
from ese_trainer.hub_models import ModelNotFoundError, resolve_model_path, work_offline_if_hub_unreachable
from ese_trainer.modeling.pooling import check_pooling
from ese_trainer.modeling.slicing import check_dims, check_layers
from ese_trainer.release.export import saved_pooling
from ese_trainer.release.run_io import save_grid, save_json

PROG = "recipes/evaluate_sts.py"


@dataclass
class EvaluationArguments:
    model_name_or_path: str = field(metadata={"help": "Hub id or local folder (e.g. a training output folder)."})
    pooling: str | None = field(default=None, metadata={"help": "Default: the folder's saved pooling, else mean."})
    sts_data_dir: str = field(default=EMBEDDED_DATA_DIR, metadata={
        "help": f"SentEval-layout data folder (default: the embedded {EMBEDDED_DATA_DIR}/); "
                f"'{HUB_STS_SOURCE}': the mteb/*-sts Hub datasets."})
    sts_tasks: list[str] = field(default_factory=lambda: list(STS_TASKS), metadata={"help": "Tasks to run."})
    max_seq_length: int = field(default=128, metadata={"help": "Truncation length in tokens."})
    batch_size: int = field(default=128, metadata={"help": "Encoding batch size."})
    device: str = field(default="cpu", metadata={"help": "cpu, cuda, cuda:1, ..."})
    bf16: bool = field(default=False, metadata={
        "help": "Encode with a bfloat16 copy of the model (CPUs with AVX512-bf16/AMX, GPUs): faster, scores within "
                "about 0.01 of float32 (bench/results/eval_throughput.md)."})
    output_file: str | None = field(default=None, metadata={"help": "JSON path; the .md table is written beside."})
    layers: list[str] | None = field(default=None, metadata={
        "help": "Layer x dim grid: transformer layers 1..n or 'all' (default with --dims: the last layer)."})
    dims: list[int] | None = field(default=None, metadata={
        "help": "Layer x dim grid: leading dims kept, ascending (default with --layers: the full hidden size)."})
    time_depths: bool | None = field(default=None, metadata={
        "help": "Grid: also time encoding with the model truncated to each layer (default: when --layers is given)."})
    time_sentences: int | None = field(default=None, metadata={
        "help": "Grid timing: at most this many sentences (STS-B test's, else the first task's); default all."})

    def __post_init__(self) -> None:
        unknown = [task for task in self.sts_tasks if task not in STS_TASKS]
        if unknown:
            raise ValueError(f"sts_tasks: unknown task(s) {unknown}; choose from {list(STS_TASKS)}")
        if self.pooling is not None:
            check_pooling(self.pooling)
        if self.time_sentences is not None and self.time_sentences < 1:
            raise ValueError(f"time_sentences must be at least 1, got {self.time_sentences}")


ARGUMENT_GROUPS = (EvaluationArguments,)


def run(argv: list[str]) -> dict:
    (args,) = parse_config(argv, ARGUMENT_GROUPS, prog=PROG, description=__doc__)
    work_offline_if_hub_unreachable()
    model_path = resolve_model_path(args.model_name_or_path)
    grid_mode = args.layers is not None or args.dims is not None
    if grid_mode:  # refuse bad layers / dims before loading data or weights
        config = AutoConfig.from_pretrained(model_path, trust_remote_code=True)
        try:
            layers = check_layers(args.layers, config.num_hidden_layers)
            dims = check_dims(args.dims, config.hidden_size)
        except ValueError as error:
            raise ConfigError(f"command line: {error}") from None
    pooling = args.pooling or saved_pooling(model_path) or "mean"
    tasks = {task: load_sts_task(task, args.sts_data_dir) for task in args.sts_tasks}
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModel.from_pretrained(model_path, trust_remote_code=True).to(args.device).eval()
    if grid_mode:
        return run_grid(args, model, tokenizer, tasks, pooling, layers, dims)
    results = evaluate_sts(model, tokenizer, tasks, pooling, args.max_seq_length, args.batch_size, bf16=args.bf16)
    table = markdown_table({args.model_name_or_path: results})
    print(f"\nSTS (cosine Spearman x100, {pooling} pooling)\n{table}")
    if args.output_file:
        output = Path(args.output_file)
        output.parent.mkdir(parents=True, exist_ok=True)
        save_json(output, {"model": args.model_name_or_path, "pooling": pooling, "metric": "cosine Spearman x100",
                           "results": results})
        output.with_suffix(".md").write_text(table + "\n")
    return results


def run_grid(args: EvaluationArguments, model, tokenizer, tasks, pooling: str, layers: list[int],
             dims: list[int]) -> dict:
    """The layer x dim grid, encode time per depth (unless disabled), printed and saved as json / md / png."""
    grid = evaluate_layer_dim_grid(model, tokenizer, tasks, pooling, layers, dims, args.max_seq_length,
                                   args.batch_size)
    if args.time_depths if args.time_depths is not None else args.layers is not None:
        timed = tasks["STSBenchmark"] if "STSBenchmark" in tasks else next(iter(tasks.values()))
        sentences = list(dict.fromkeys(timed.sentences1 + timed.sentences2))[: args.time_sentences]
        grid[ENCODE_SECONDS_KEY] = encode_time_per_depth(model, tokenizer, sentences, pooling, layers,
                                                         args.max_seq_length, args.batch_size, repeats=2)
        grid["timed_on"] = f"{len(sentences)} sentences of {timed.name}, {args.device}, median of 2"
    grid = {"model": args.model_name_or_path, "pooling": pooling, "metric": "cosine Spearman x100",
            "max_seq_length": args.max_seq_length, **grid}
    label = "average of " + ", ".join(tasks) if len(tasks) > 1 else ", ".join(tasks)
    print(f"\nSTS layer x dim grid (cosine Spearman x100, {pooling} pooling, {label})\n{grid_markdown(grid)}")
    if args.output_file:
        title = f"{args.model_name_or_path}: STS by layer x dim ({pooling} pooling)"
        paths = save_grid(grid, Path(args.output_file).with_suffix(""), title)
        print("wrote " + ", ".join(map(str, paths)))
    return grid


if __name__ == "__main__":
    run_cli(run, (DataError, ModelNotFoundError))
