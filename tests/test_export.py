"""Saved folders load with sentence-transformers and embed exactly as training pooled, for every pooling."""

import pytest
import torch
from sentence_transformers import SentenceTransformer

from ese_trainer.evaluation.sts import encode
from ese_trainer.modeling.pooling import POOLING_MODES
from ese_trainer.release.export import save_sentence_transformer, saved_pooling

SENTENCES = ["A man is playing a guitar.", "Two dogs run through a field.", "Rain."]


@pytest.mark.parametrize("pooling", POOLING_MODES)
def test_round_trip(minilm, tokenizer, tmp_path, pooling):
    save_sentence_transformer(minilm, tokenizer, tmp_path, pooling, max_seq_length=128)
    assert saved_pooling(tmp_path) == pooling
    loaded = SentenceTransformer(str(tmp_path), device="cpu")
    assert loaded.max_seq_length == 128
    theirs = loaded.encode(SENTENCES, convert_to_tensor=True).cpu()
    ours = encode(minilm, tokenizer, SENTENCES, pooling, show_progress=False)
    assert torch.nn.functional.cosine_similarity(ours, theirs).min() > 0.99999


def test_saved_pooling_reads_legacy_configs(minilm_path):
    assert saved_pooling(minilm_path) == "mean"  # the bundled folder uses the pre-5.4 boolean format


def test_unknown_pooling_is_refused(minilm, tokenizer, tmp_path):
    with pytest.raises(ValueError, match="unknown pooling"):
        save_sentence_transformer(minilm, tokenizer, tmp_path, "median", 128)
