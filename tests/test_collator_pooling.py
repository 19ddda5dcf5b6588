"""Collator (own tokenizer, truncation, dynamic padding, scores not under labels) and masked pooling."""

import pytest
import torch

from ese_trainer.data.collator import SCORES_KEY, PairCollator
from ese_trainer.modeling.encoding import SentenceEncoder
from ese_trainer.modeling.pooling import POOLING_MODES, pool


def test_collator_tokenises_both_sides_with_dynamic_padding(tokenizer):
    features = [{"sentence1": "A man is playing a guitar.", "sentence2": "Someone plays music.", "score": 1.0},
                {"sentence1": "Hi.", "sentence2": "A long sentence " * 40, "score": 0.5}]
    batch = PairCollator(tokenizer, max_seq_length=32)(features)
    assert "labels" not in batch and batch[SCORES_KEY].dtype == torch.float32
    assert batch[SCORES_KEY].tolist() == [1.0, 0.5]
    assert batch["input_ids"].shape == (4, 32)  # side one rows 0-1, side two rows 2-3; truncated at 32
    short = PairCollator(tokenizer, max_seq_length=128)(features[:1])
    expected = max(len(tokenizer(text)["input_ids"]) for text in (features[0]["sentence1"], features[0]["sentence2"]))
    assert short["input_ids"].shape == (2, expected)  # padded to the longest text, not to max_seq_length
    assert tokenizer.decode(short["input_ids"][1], skip_special_tokens=True) == "someone plays music."


@pytest.mark.parametrize("mode", POOLING_MODES)
def test_pooling_ignores_padding(tokenizer, minilm, mode):
    sentences = ["A cat sits on the mat.", "The quick brown fox jumps over the lazy dog near the river bank."]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        pooled = pool(minilm(**batch).last_hidden_state, batch["attention_mask"], mode)
        alone = tokenizer(sentences[:1], return_tensors="pt")
        single = pool(minilm(**alone).last_hidden_state, alone["attention_mask"], mode)
    assert torch.allclose(pooled[0], single[0], atol=1e-5)


def test_pooling_formulas():
    hidden = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert pool(hidden, mask, "cls").tolist() == [[0, 1], [6, 7]]
    assert pool(hidden, mask, "mean").tolist() == [[1, 2], [8, 9]]
    assert pool(hidden, mask, "cls_avg").tolist() == [[0.5, 1.5], [7, 8]]
    assert pool(hidden, mask, "max").tolist() == [[2, 3], [10, 11]]
    assert pool(hidden, mask, "last").tolist() == [[2, 3], [10, 11]]
    with pytest.raises(ValueError, match="unknown pooling"):
        pool(hidden, mask, "median")


def test_collator_gives_equal_texts_equal_ids(tokenizer):
    features = [{"sentence1": "A dog runs.", "sentence2": "An animal runs.", "score": 1.0},
                {"sentence1": "A dog runs.", "sentence2": "A cat sleeps.", "score": 0.0}]
    ids = PairCollator(tokenizer)(features)["text_ids"]
    assert ids.shape == (4,) and ids[0] == ids[1] and len(set(ids.tolist())) == 3


@pytest.mark.parametrize("chunks", [2, 3])
def test_length_sorted_chunks_equal_one_padded_pass(tokenizer, minilm, chunks):
    sentences = ["A dog.", "Two children play football in a park on a sunny afternoon.", "Rain.",
                 "A man is slicing a tomato in the kitchen."]
    batch = dict(tokenizer(sentences, padding=True, return_tensors="pt"))
    with torch.no_grad():
        single = SentenceEncoder(minilm, "mean", forward_chunks=1)(batch).embeddings
        chunked = SentenceEncoder(minilm, "mean", forward_chunks=chunks)(batch).embeddings
    assert torch.allclose(single, chunked, atol=1e-5)
