"""Shared fixtures: the real all-MiniLM-L6-v2 (offline, from its bundling package), its tokenizer, real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel  # noqa: E402

from ese_trainer.hub_models import resolve_model_path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EMBEDDED_DATA = REPO / "data"
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="session")
def minilm_path() -> str:
    return resolve_model_path(MINILM_ID)


@pytest.fixture(scope="session")
def tokenizer(minilm_path):
    return AutoTokenizer.from_pretrained(minilm_path)


@pytest.fixture(scope="session")
def minilm(minilm_path):
    return AutoModel.from_pretrained(minilm_path).eval()


def build_tiny_bert(vocab_size: int, seed: int = 0, dropout: float = 0.0) -> BertModel:
    """A 2-layer, 32-dim random BERT for tests of mechanics (never for quality)."""
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout)
    return BertModel(config, add_pooling_layer=False)


def build_tiny_moe(vocab_size: int, seed: int = 0, dropout: float = 0.0):
    """The tiny BERT's shape with 4 experts (top-2) in both layers, for tests of mechanics."""
    from ese_trainer.modeling import MoEBertConfig, MoEBertModel

    torch.manual_seed(seed)
    config = MoEBertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=dropout,
                           attention_probs_dropout_prob=dropout, num_experts=4, num_experts_per_tok=2)
    return MoEBertModel(config, add_pooling_layer=False)


SMALL_STS_PAIRS = 100


@pytest.fixture(scope="session")
def small_sts(tmp_path_factory) -> Path:
    """An STS folder in the embedded layout holding the first ``SMALL_STS_PAIRS`` real pairs of STS-B dev and test
    (``STS/STSBenchmark/sts-{dev,test}.csv``): for runs whose test is about mechanics, not the score, so their
    evaluations take a second rather than a minute. Give ``--sts_data_dir`` the folder, ``--sts_dev`` its dev file."""
    folder = tmp_path_factory.mktemp("small_sts")
    for split in ("dev", "test"):
        path = folder / "STS" / "STSBenchmark" / f"sts-{split}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = (EMBEDDED_DATA / "STS" / "STSBenchmark" / f"sts-{split}.csv").read_text().splitlines()
        path.write_text("\n".join(lines[:SMALL_STS_PAIRS]) + "\n")
    return folder


@pytest.fixture(scope="session")
def small_dev(small_sts) -> Path:
    """``small_sts``'s STS-B dev pairs (the file's own layout)."""
    return small_sts / "STS" / "STSBenchmark" / "sts-dev.csv"


def small_sts_args(folder: Path) -> list[str]:
    """The recipe's options that evaluate on ``small_sts``: STS-B dev for checkpoints, STS-B test for the table."""
    return ["--sts_data_dir", str(folder), "--sts_dev", str(folder / "STS" / "STSBenchmark" / "sts-dev.csv"),
            "--sts_tasks", "STSBenchmark"]


@pytest.fixture
def tiny_bert(tokenizer) -> BertModel:
    return build_tiny_bert(len(tokenizer))


def snli_rows(count: int, seed: int = 0):
    """``count`` rows of the embedded SNLI dev split (a premise with its entailment as positive, its contradiction as
    hard negative, neutral as a ranking pair), as the recipe builds them."""
    from ese_trainer.data.sources import TrainSource, load_train_sources

    rows, _ = load_train_sources([TrainSource(str(EMBEDDED_DATA / "SNLI"), "nli", "dev", max_samples=count)], seed)
    return rows.remove_columns("source")
