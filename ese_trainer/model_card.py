"""The model card (``README.md`` with Hub metadata) of a run, generated from the run's own files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ese_trainer.data.nli import NLI_LABEL_NAMES
from ese_trainer.data.sts import STS_TASKS
from ese_trainer.evaluation import markdown_table
from ese_trainer.hub_models import looks_like_local_path

CITATIONS = {
    "AnglE": """@inproceedings{li-li-2024-aoe,
  title = {{AoE}: Angle-optimized Embeddings for Semantic Textual Similarity},
  author = {Li, Xianming and Li, Jing},
  booktitle = {Proceedings of ACL 2024},
  year = {2024},
  note = {arXiv:2309.12871}
}""",
    "ESE": """@inproceedings{li2025ese,
  title = {{ESE}: Espresso Sentence Embeddings},
  author = {Li, Xianming and Li, Zongxi and Li, Jing and Xie, Haoran and Li, Qing},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year = {2025},
  note = {arXiv:2402.14776}
}""",
    "CoSENT": """@misc{su2022cosent,
  title = {{CoSENT}: A more efficient sentence vector scheme than Sentence-BERT},
  author = {Su, Jianlin},
  year = {2022},
  url = {https://kexue.fm/archives/8847}
}""",
    "Sentence-BERT": """@inproceedings{reimers-gurevych-2019-sentence,
  title = {Sentence-{BERT}: Sentence Embeddings using {S}iamese {BERT}-Networks},
  author = {Reimers, Nils and Gurevych, Iryna},
  booktitle = {Proceedings of EMNLP-IJCNLP 2019},
  year = {2019}
}""",
}

RUN_FILES = ("resolved_config.yaml", "eval_results.json", "data_counts.json")


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _is_hub_id(name: str) -> bool:
    return not looks_like_local_path(name) and not Path(name).exists()


def _eval_results(after: dict[str, float]) -> list[EvalResult]:
    return [
        EvalResult(task_type="semantic-similarity", task_name="Semantic Textual Similarity",
                   dataset_type=STS_TASKS[task].hub_id, dataset_name=task, dataset_split="test",
                   metric_type="cosine_spearman", metric_name="Spearman (cosine) x100", metric_value=round(score, 2))
        for task, score in after.items() if task in STS_TASKS
    ]


def _loss_section(config: dict[str, Any]) -> list[str]:
    rows = [("cosine (CoSENT)", "cosine_w", "cosine_scale"), ("in-batch negatives (InfoNCE)", "ibn_w", "ibn_scale"),
            ("angle (AnglE)", "angle_w", "angle_scale")]
    lines = ["| term | weight | scale |", "|---|---|---|"]
    lines += [f"| {name} | {config[weight]} | {config[scale]} |" for name, weight, scale in rows]
    lines += ["", f"In-batch positives: pairs with score ≥ {config['ibn_positive_threshold']}; every other text of "
              "the batch is a negative.",
              f"Negatives gathered across processes: {config.get('gather_across_devices', False)}; "
              f"gradient cache: {config.get('ibn_cache', False)}."]
    return lines


def build_model_card(output_dir: str | Path) -> ModelCard:
    """The card of the run in ``output_dir``, from ``resolved_config.yaml``, ``eval_results.json``,
    ``data_counts.json``, ``run_info.json`` and ``trainer_state.json``."""
    output_dir = Path(output_dir)
    missing = [name for name in RUN_FILES if not (output_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{output_dir}: not a finished training run (missing {', '.join(missing)})")
    config = yaml.safe_load((output_dir / "resolved_config.yaml").read_text())
    results = _read_json(output_dir / "eval_results.json")
    counts = _read_json(output_dir / "data_counts.json").get("train", {})
    run_info = _read_json(output_dir / "run_info.json")
    state = _read_json(output_dir / "trainer_state.json")
    base_model = config["model_name_or_path"]
    train_source = config["train_dataset"]
    tables = {label: results[label] for label in ("before", "after") if label in results}

    card_data = ModelCardData(
        base_model=base_model if _is_hub_id(base_model) else None,
        datasets=[train_source] if _is_hub_id(train_source) else None,
        library_name="sentence-transformers",
        pipeline_tag="sentence-similarity",
        language="en",
        tags=["sentence-transformers", "sentence-similarity", "feature-extraction", "ese-trainer", "cosent", "angle"],
        model_name=config.get("hub_model_id") or output_dir.name,
        eval_results=_eval_results(tables.get("after", {})) or None,
    )
    label_map = ", ".join(f"{name} → {config['label_map'][name]}" for name in NLI_LABEL_NAMES
                          if name in config["label_map"])
    steps = state.get("global_step")
    body = [
        f"# {card_data.model_name}",
        "",
        f"A sentence-embedding model fine-tuned from `{base_model}` on NLI pairs with "
        "ese-trainer (CoSENT + in-batch negatives + AnglE). It maps sentences to "
        f"{run_info.get('embedding_dimension', 'dense')}-dimensional vectors compared by cosine similarity.",
        "",
        "## Usage",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "",
        f'model = SentenceTransformer("{config.get("hub_model_id") or output_dir}")',
        'embeddings = model.encode(["A man is playing a guitar.", "Someone plays music."])',
        "print(model.similarity(embeddings[0], embeddings[1]))",
        "```",
        "",
        "## Evaluation",
        "",
        "Cosine Spearman ×100 on the test sets (STS12–16 in SentEval's \"all\" setting), with this model's own "
        "tokenizer; `before` is the base model.",
        "",
        markdown_table(tables) if tables else "_No STS suite was run._",
        "",
        "## Training",
        "",
        f"- Data: `{train_source}` (split `{config['train_split']}`): {counts.get('rows_read', '?')} rows read, "
        f"{counts.get('kept', '?')} kept, {counts.get('used_after_max_samples', '?')} used; dropped "
        f"{counts.get('dropped_unlabelled', 0)} unlabelled, {counts.get('dropped_unknown_label', 0)} with an "
        f"unknown label, {counts.get('dropped_empty_text', 0)} with an empty text.",
        f"- NLI label map: {label_map}.",
        f"- Pooling: `{config['pooling']}`; max sequence length {config['max_seq_length']}.",
        "",
        *_loss_section(config),
        "",
        "| hyper-parameter | value |",
        "|---|---|",
        *(f"| {key} | {config[key]} |" for key in ("learning_rate", "per_device_train_batch_size",
                                                  "gradient_accumulation_steps", "num_train_epochs", "max_steps",
                                                  "warmup_steps", "weight_decay", "lr_scheduler_type", "seed", "bf16")
          if key in config),
        f"| processes | {run_info.get('world_size', 1)} |",
        f"| optimizer steps | {steps} |",
        "",
        f"Model selection: the checkpoint with the best STS-B **dev** cosine Spearman ({config['sts_dev']}): "
        f"`{Path(state['best_model_checkpoint']).name}` ({state['best_metric']:.2f})."
        if state.get("best_model_checkpoint") and config.get("load_best_model_at_end")
        else "Model selection: none; these are the final weights.",
        "",
        "## Citation",
        "",
        "```bibtex",
        "\n\n".join(CITATIONS.values()),
        "```",
        "",
    ]
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(body))


def write_model_card(output_dir: str | Path) -> Path:
    path = Path(output_dir) / "README.md"
    build_model_card(output_dir).save(path)
    return path

