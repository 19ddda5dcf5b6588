"""Collator (own tokenizer, truncation, dynamic padding, the row layout not under labels) and masked pooling."""

import pytest
import torch

from ese_trainer.data.collator import OTHER_ROLE_KEY, OTHER_ROW_KEY, OTHER_SCORE_KEY, RowCollator
from ese_trainer.data.rows import NEGATIVE, POSITIVE, SCORED
from ese_trainer.modeling.encoding import SentenceEncoder
from ese_trainer.modeling.pooling import POOLING_MODES, pool


def test_collator_tokenises_every_text_once_with_dynamic_padding(tokenizer):
    rows = [{"anchor": "A man is playing a guitar.", "texts": ["Someone plays music.", "Nobody plays."],
             "scores": [1.0, 0.0], "roles": [POSITIVE, NEGATIVE]},
            {"anchor": "Hi.", "texts": ["A long sentence " * 40], "scores": [0.5], "roles": [SCORED]}]
    batch = RowCollator(tokenizer, max_seq_length=32)(rows)
    assert "labels" not in batch and batch[OTHER_SCORE_KEY].dtype == torch.float32
    assert batch["input_ids"].shape == (5, 32)  # anchors in rows 0-1, then the other texts; truncated at 32
    assert batch[OTHER_ROW_KEY].tolist() == [0, 0, 1] and batch[OTHER_ROLE_KEY].tolist() == [0, 1, 2]
    assert batch[OTHER_SCORE_KEY].tolist() == [1.0, 0.0, 0.5]
    short = RowCollator(tokenizer, max_seq_length=128)(rows[:1])
    expected = max(len(tokenizer(text)["input_ids"]) for text in (rows[0]["anchor"], *rows[0]["texts"]))
    assert short["input_ids"].shape == (3, expected)  # padded to the longest text, not to max_seq_length
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
    rows = [{"anchor": "A dog runs.", "texts": ["An animal runs."], "scores": [1.0], "roles": [POSITIVE]},
            {"anchor": "A dog runs.", "texts": ["A cat sleeps."], "scores": [0.0], "roles": [NEGATIVE]}]
    ids = RowCollator(tokenizer)(rows)["text_ids"]
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
