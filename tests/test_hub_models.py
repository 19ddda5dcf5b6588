"""Hub ids resolve offline from the bundling package, through a seeded HF cache; failures say what was tried."""

import os
import subprocess
import sys

import pytest

from ese_trainer.hub_models import ModelNotFoundError, resolve_model_path

from .conftest import MINILM_ID


def test_fresh_cache_offline_resolves_hub_id_and_plain_from_pretrained_works(tmp_path):
    script = (
        "from ese_trainer.hub_models import resolve_model_path\n"
        f"path = resolve_model_path({MINILM_ID!r})\n"
        "from transformers import AutoModel, AutoTokenizer\n"
        f"model = AutoModel.from_pretrained({MINILM_ID!r})\n"  # by Hub id, offline, from the seeded cache
        f"tokens = AutoTokenizer.from_pretrained({MINILM_ID!r})('hello world', return_tensors='pt')\n"
        "shape = model(**tokens).last_hidden_state.shape\n"
        "print(path, model.config.num_hidden_layers, model.config.hidden_size, shape)\n"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    path, layers, hidden, shape = result.stdout.split(maxsplit=3)
    assert path.startswith(str(tmp_path / "hf")) and (layers, hidden) == ("6", "384")
    assert shape.strip() == "torch.Size([1, 4, 384])"


def test_missing_local_path_is_named(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model_path(str(tmp_path / "no-model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model_path(str(tmp_path / "empty"))


def test_unresolvable_id_lists_what_was_tried(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as error:
        resolve_model_path("no-such-org/no-such-model")
    message = str(error.value)
    assert "'no-such-org/no-such-model'" in message
    assert "Hugging Face Hub (skipped: HF_HUB_OFFLINE=1)" in message
    assert "local Hugging Face cache" in message and "bundled packages" in message
