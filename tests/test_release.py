"""Release: readiness checks, and the push up to the Hub client call (the Hub itself is unreachable here)."""

import os
import subprocess
import sys

import pytest
from huggingface_hub import HfApi
from huggingface_hub.utils import filter_repo_objects

from ese_trainer.release.export import save_sentence_transformer
from ese_trainer.release.hub_push import PushError, check_push_ready, push_model_dir
from tests.conftest import REPO

SECRET = "hf_notARealTokenButSecret123"


@pytest.fixture
def model_dir(minilm, tokenizer, tmp_path):
    folder = tmp_path / "run"
    save_sentence_transformer(minilm, tokenizer, folder, "mean", 128)
    (folder / "README.md").write_text("---\nlibrary_name: sentence-transformers\n---\n# card\n")
    (folder / "checkpoint-20").mkdir()
    (folder / "checkpoint-20" / "model.safetensors").write_bytes(b"0")
    return folder


class HubCalls:
    """Records what would be sent to the Hub instead of sending it."""

    def __init__(self, monkeypatch, fail_upload: Exception | None = None):
        self.calls = []

        def create_repo(api, repo_id, **kwargs):
            self.calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(api, **kwargs):
            self.calls.append(("upload_folder", kwargs["repo_id"], kwargs))
            if fail_upload:
                raise fail_upload
            return "https://huggingface.co/me/minilm/commit/abc"

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)


def test_push_sends_the_folder_without_checkpoints(model_dir, monkeypatch):
    hub = HubCalls(monkeypatch)
    url = push_model_dir(model_dir, "me/minilm", private=True, token=SECRET)
    assert url.endswith("/commit/abc")
    (_, repo, create_kwargs), (_, upload_repo, upload_kwargs) = hub.calls
    assert repo == upload_repo == "me/minilm" and create_kwargs["private"] is True
    assert upload_kwargs["folder_path"] == str(model_dir)
    sent = set(filter_repo_objects([path.relative_to(model_dir).as_posix() for path in model_dir.rglob("*")
                                    if path.is_file()], ignore_patterns=upload_kwargs["ignore_patterns"]))
    assert {"modules.json", "model.safetensors", "README.md", "1_Pooling/config.json"} <= sent
    assert not any(name.startswith("checkpoint-") for name in sent)


def test_failed_push_keeps_the_folder_and_says_how_to_retry(model_dir, monkeypatch):
    files_before = sorted(path.name for path in model_dir.iterdir())
    HubCalls(monkeypatch, fail_upload=ConnectionError(f"connection reset while sending with token {SECRET}"))
    with pytest.raises(PushError) as error:
        push_model_dir(model_dir, "me/minilm", token=SECRET)
    message = str(error.value)
    assert "the local folder is intact" in message
    assert f"python recipes/push_to_hub.py --model_dir {model_dir} --hub_model_id me/minilm" in message
    assert SECRET not in message and "***" in message
    assert sorted(path.name for path in model_dir.iterdir()) == files_before


def test_push_refuses_an_unfinished_folder(tmp_path):
    with pytest.raises(PushError, match="modules.json is missing"):
        push_model_dir(tmp_path, "me/minilm", token=SECRET)


def test_readiness_errors(monkeypatch):
    with pytest.raises(PushError, match="needs hub_model_id"):
        check_push_ready(None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PushError, match="HF_HUB_OFFLINE=1"):
        check_push_ready("me/minilm")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("ese_trainer.release.hub_push.get_token", lambda: None)
    with pytest.raises(PushError, match="no Hugging Face token"):
        check_push_ready("me/minilm")


def test_unreachable_hub_is_reported_without_the_token(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(PushError) as error:  # this machine cannot reach huggingface.co
        check_push_ready("me/minilm", token=SECRET)
    assert "the Hub is not reachable with your token" in str(error.value) and SECRET not in str(error.value)


def test_recipe_checks_push_before_training(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, str(REPO / "recipes" / "train_nli.py"), "--config",
                             "configs/smoke_snli.yaml",
                             "--output_dir", str(tmp_path / "out"), "--push_to_hub", "true", "--hub_model_id",
                             "me/minilm"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "error: push_to_hub: working offline (HF_HUB_OFFLINE=1" in result.stderr
    assert not (tmp_path / "out").exists()  # nothing was loaded or trained
