"""The model card (``README.md`` with Hub metadata) of a run, generated from the run's own files."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ese_trainer.data.nli import NLI_LABEL_NAMES
from ese_trainer.data.sts import STS_TASKS
from ese_trainer.ese.settings import setting_names
from ese_trainer.evaluation.layer_grid import recommend_sizes
from ese_trainer.evaluation.tables import markdown_table
from ese_trainer.losses import LOSS_TERMS
from ese_trainer.modeling.arguments import MoEArguments
from ese_trainer.paths import looks_like_local_path

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
MOE_CITATIONS = {
    "Sparse upcycling": """@inproceedings{komatsuzaki2023sparse,
  title = {Sparse Upcycling: Training Mixture-of-Experts from Dense Checkpoints},
  author = {Komatsuzaki, Aran and Puigcerver, Joan and Lee-Thorp, James and Riquelme, Carlos and Mustafa, Basil
            and Ainslie, Joshua and Tay, Yi and Dehghani, Mostafa and Houlsby, Neil},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year = {2023},
  note = {arXiv:2212.05055}
}""",
    "Switch Transformer": """@article{fedus2022switch,
  title = {Switch Transformers: Scaling to Trillion Parameter Models with Simple and Efficient Sparsity},
  author = {Fedus, William and Zoph, Barret and Shazeer, Noam},
  journal = {Journal of Machine Learning Research},
  volume = {23},
  year = {2022},
  note = {arXiv:2101.03961}
}""",
    "ST-MoE": """@misc{zoph2022stmoe,
  title = {{ST-MoE}: Designing Stable and Transferable Sparse Expert Models},
  author = {Zoph, Barret and Bello, Irwan and Kumar, Sameer and Du, Nan and Huang, Yanping and Dean, Jeff
            and Shazeer, Noam and Fedus, William},
  year = {2022},
  note = {arXiv:2202.08906}
}""",
}
MOE_CARD_KEYS = tuple(key.name for key in fields(MoEArguments) if key.name != "moe_enabled")
ESE_CARD_KEYS = tuple(f"ese_{name}" for name in setting_names())

RUN_FILES = ("resolved_config.yaml", "data_counts.json")  # eval_results.json: absent when no suite was run
# The embedded data folders (data/README.md) and the Hub datasets they copy: the card's ``datasets:`` metadata.
EMBEDDED_HUB_IDS = {"data/SNLI": "stanfordnlp/snli", "data/STS/STSBenchmark": "sentence-transformers/stsb",
                    "data/SICK": "RobZamp/sick"}


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
    scales = {"cosent": config.get("cosent_scale"), "ibn": config.get("ibn_scale"), "angle": config.get("angle_scale"),
              "hinge": f"margin {config.get('hinge_margin')}"}
    lines = ["Objective: every row is an anchor with its positive, hard negatives and scored texts (an NLI premise: "
             "entailment, contradiction, neutral); the terms below are summed with their weights on one forward pass "
             "of each row's texts.", "", "| term | weight | scale |", "|---|---|---|"]
    lines += [f"| {term.title} | {config[f'{term.key}_w']} | {scales[term.key]} |" for term in LOSS_TERMS]
    guide = config.get("guide_model")
    lines += ["", f"Roles: a text scoring ≥ {config['positive_min_score']} against its anchor is its positive, "
              f"≤ {config['negative_max_score']} a hard negative; every scored text is a ranking pair. In-batch "
              f"directions: {', '.join(config.get('ibn_directions') or ['query_to_doc'])} "
              f"({config.get('ibn_partition_mode', 'joint')}); hardness: {config.get('ibn_hardness_mode', 'none')}"
              + (f" (alpha {config.get('ibn_hardness_strength')})" if config.get("ibn_hardness_mode", "none") != "none"
                 else "")
              + "; guide model: " + (f"`{guide}` (false negatives filtered, margin {config.get('guide_margin')})"
                                     if guide else "none") + ".",
              f"Negatives gathered across processes: {config.get('gather_across_devices', False)}; "
              f"gradient cache: {config.get('ibn_cache', False)}."]
    return lines


def _data_section(data_counts: dict[str, Any]) -> list[str]:
    """One row per training source: rows read, pairs kept, rows built (with a positive, with hard negatives), rows
    used, NLI drops, mined negatives, steps per epoch."""
    steps = data_counts.get("steps_per_epoch", {})
    lines = ["- Training data (each optimizer step from one source, no text twice in a step):", "",
             "| source | kind | rows read | pairs | rows built | rows used | with positive | with hard negative "
             "| weight | dropped (unlabelled / unknown label / empty) | mined negatives | steps per epoch |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for item in data_counts.get("sources", []):
        nli, rows, mined = item.get("nli") or {}, item.get("rows") or {}, item.get("mined") or {}
        dropped = (f"{nli['dropped_unlabelled']} / {nli['dropped_unknown_label']} / {nli['dropped_empty_text']}"
                   if nli else "–")
        lines.append(f"| `{item['name']}` | {item['kind']} | {item['rows_read']} | {item['pairs']} | "
                     f"{item.get('rows_built', '–')} | {item['rows_used']} | {rows.get('rows_with_positive', '–')} | "
                     f"{rows.get('rows_with_negative', '–')} | {item['weight']} | {dropped} | "
                     f"{mined.get('negatives', '–')} | {steps.get(item['name'], '–')} |")
    return [*lines, ""]


def _hub_datasets(sources: list[dict[str, Any]]) -> list[str]:
    """The Hub ids of the training sources: a Hub id as it is, an embedded ``data/`` folder as the dataset it copies."""
    ids = []
    for item in sources:
        source = str(item.get("source") or item["name"].split("[")[0])
        embedded = next((hub_id for folder, hub_id in EMBEDDED_HUB_IDS.items()
                         if Path(source).as_posix().startswith(folder)), None)
        hub_id = embedded or (source if _is_hub_id(source) else None)
        if hub_id and hub_id not in ids:
            ids.append(hub_id)
    return ids


def _settings_table(config: dict[str, Any], keys: tuple[str, ...], prefix: str) -> list[str]:
    rows = [f"| {prefix}.{key.removeprefix(prefix + '_')} | {config[key]} |" for key in keys
            if config.get(key) is not None]
    return ["| setting | value |", "|---|---|", *rows] if rows else ["_Defaults of the model config._"]


def _moe_section(config: dict[str, Any], output_dir: Path) -> list[str]:
    if not config.get("moe_enabled"):
        return []
    utilisation = _read_json(output_dir / "expert_utilisation.json")
    lines = ["## Mixture of Experts", "",
             "The encoder is a BERT whose feed-forward blocks are routed Mixture-of-Experts layers, converted from "
             f"`{config['model_name_or_path']}` (function-preserving: `upcycled` experts start as copies of the dense "
             "FFN, `residual` experts start at zero beside it) and trained with a Switch load-balancing loss and a "
             "router z-loss. Load it with `trust_remote_code=True` (the folder carries its modelling code).", "",
             *_settings_table(config, MOE_CARD_KEYS, "moe")]
    if utilisation:
        final = utilisation["final"]
        lines += ["", f"Expert utilisation in the last logged window (step {final['step']}; share of routed tokens, "
                  f"balanced = {utilisation['balanced_share']:.2f}):", "",
                  "| layer | " + " | ".join(f"expert {e}" for e in range(utilisation["num_experts"])) + " | entropy |",
                  "|---" * (utilisation["num_experts"] + 2) + "|"]
        lines += [f"| {layer} | " + " | ".join(f"{share:.3f}" for share in values["shares"])
                  + f" | {values['entropy']:.3f} |" for layer, values in final["layers"].items()]
    return lines + [""]


def _ese_section(config: dict[str, Any], output_dir: Path) -> list[str]:
    if not config.get("ese_enabled"):
        return []
    grid = output_dir / "ese_grid.md"
    schedule = ("a fixed list of (layer, leading dims) slices, each trained with the same loss every step "
                "(Starbucks)" if config.get("ese_schedule") == "starbucks" else
                "every transformer layer's pooled embedding and its first k dims under the same loss (weighted by "
                "depth), and the first k dims distilled toward a compression target of the full embedding")
    lines = ["## Espresso Sentence Embeddings (ESE)", "",
             f"Trained so that shallower layers and the leading dimensions are embeddings of their own: {schedule}.",
             "", *_settings_table(config, ESE_CARD_KEYS, "ese")]
    grid_json = output_dir / "ese_grid.json"
    if grid_json.is_file():
        lines += ["", "Recommended sizes (7-task average of the slice vs. the full model; encode speed of the model "
                  "cut to that depth):", ""]
        for size in recommend_sizes(json.loads(grid_json.read_text())):
            speed = f", encodes {size['encode_speed_up']:.1f}x faster" if size["encode_speed_up"] else ""
            lines.append(f"- within {size['tolerance']:g} point(s) of the full model ({size['full_score']:.2f}): "
                         f"layer {size['layer']}, {size['dim']} dims ({size['score']:.2f}){speed} — "
                         f"`recipes/export_slice.py --layer {size['layer']} --dim {size['dim']}`")
    if grid.is_file():
        lines += ["", "STS average (cosine Spearman ×100) of each (layer, leading dims) slice of this model:", "",
                  grid.read_text().strip(), "",
                  "A slice is released with `recipes/export_slice.py --layer L --dim d`: the folder keeps only the "
                  "first L layers and sets `truncate_dim`; or use the full model with "
                  "`SentenceTransformer(path, truncate_dim=d)`."]
    return lines + [""]


def build_model_card(output_dir: str | Path) -> ModelCard:
    """The card of the run in ``output_dir``, from ``resolved_config.yaml``, ``eval_results.json``,
    ``data_counts.json``, ``run_info.json`` and ``trainer_state.json``."""
    output_dir = Path(output_dir)
    missing = [name for name in RUN_FILES if not (output_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{output_dir}: not a finished training run (missing {', '.join(missing)})")
    config = yaml.safe_load((output_dir / "resolved_config.yaml").read_text())
    results = _read_json(output_dir / "eval_results.json")
    data_counts = _read_json(output_dir / "data_counts.json")
    run_info = _read_json(output_dir / "run_info.json")
    state = _read_json(output_dir / "trainer_state.json")
    base_model = config["model_name_or_path"]
    sources = data_counts.get("sources", [])
    hub_sources = _hub_datasets(sources)
    tables = {label: results[label] for label in ("before", "after") if label in results}

    card_data = ModelCardData(
        base_model=base_model if _is_hub_id(base_model) else None,
        datasets=hub_sources or None,
        library_name="sentence-transformers",
        pipeline_tag="sentence-similarity",
        language="en",
        tags=["sentence-transformers", "sentence-similarity", "feature-extraction", "ese-trainer", "cosent", "angle",
              *(["mixture-of-experts"] if config.get("moe_enabled") else []),
              *(["espresso-sentence-embeddings"] if config.get("ese_enabled") else [])],
        model_name=config.get("hub_model_id") or output_dir.name,
        eval_results=_eval_results(tables.get("after", {})) or None,
    )
    label_map = ", ".join(f"{name} → {config['label_map'][name]}" for name in NLI_LABEL_NAMES
                          if name in config["label_map"])
    steps = state.get("global_step")
    body = [
        f"# {card_data.model_name}",
        "",
        f"A sentence-embedding model fine-tuned from `{base_model}` with ese-trainer (in-batch negatives over "
        "grouped rows, CoSENT and AnglE over the scored pairs; weights below). It maps sentences to "
        f"{run_info.get('embedding_dimension', 'dense')}-dimensional vectors compared by cosine similarity.",
        "",
        "## Usage",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "",
        f'model = SentenceTransformer("{config.get("hub_model_id") or output_dir}"'
        + (", trust_remote_code=True)" if config.get("moe_enabled") else ")"),
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
        *_data_section(data_counts),
        f"- NLI label map: {label_map}.",
        f"- Pooling: `{config['pooling']}`; max sequence length {config['max_seq_length']}.",
        "",
        *_loss_section(config),
        "",
        *_moe_section(config, output_dir),
        *_ese_section(config, output_dir),
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
        "\n\n".join(citation for name, citation in CITATIONS.items() if name != "ESE" or config.get("ese_enabled")),
        *(["", "\n\n".join(MOE_CITATIONS.values())] if config.get("moe_enabled") else []),
        "```",
        "",
    ]
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(body))


def write_model_card(output_dir: str | Path) -> Path:
    path = Path(output_dir) / "README.md"
    build_model_card(output_dir).save(path)
    return path

