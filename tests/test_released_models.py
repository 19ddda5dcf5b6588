"""Folders released by an earlier version of the package (the flat 0.1.0 layout) still load and embed the same.

The fixtures were made by ``tests/fixtures/make_released_models.py`` at that version: a tiny dense and a tiny MoE
encoder, each fine-tuned two steps by the recipe and released by it, with the embeddings ``SentenceTransformer``
gave then.
"""

import json

import pytest
import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoModel

from .conftest import REPO

FIXTURES = REPO / "tests" / "fixtures" / "released_v0_1"


def reference(name: str) -> tuple[list[str], torch.Tensor]:
    payload = json.loads((FIXTURES / f"{name}_embeddings.json").read_text())
    return payload["sentences"], torch.tensor(payload["embeddings"])


@pytest.mark.parametrize("name", ["dense", "moe"])
def test_sentence_transformers_loads_a_released_folder_as_it_was(name):
    sentences, expected = reference(name)
    model = SentenceTransformer(str(FIXTURES / name), device="cpu", trust_remote_code=name == "moe")
    embeddings = model.encode(sentences, convert_to_tensor=True).cpu()
    torch.testing.assert_close(embeddings, expected, atol=1e-5, rtol=1e-4)


def test_released_moe_folder_loads_through_the_package_registration():
    """In-process, the package's registration of the MoE classes loads the folder without remote code."""
    import ese_trainer.modeling  # noqa: F401  (registers the MoE config and model with the Auto classes)

    model = AutoModel.from_pretrained(FIXTURES / "moe")
    assert type(model).__module__.startswith("ese_trainer.modeling")
    assert model.config.num_experts == 4 and model.config.num_experts_per_tok == 2
