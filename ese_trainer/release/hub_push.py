"""Pushing a finished run's sentence-transformers folder (with its model card) to the Hugging Face Hub.

Readiness (not offline, a token, the Hub reachable with it) is checked before any training starts. A
failed push leaves the local folder as it was and says how to retry. The token is never printed or saved.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi, get_token

from ese_trainer.errors import describe_error
from ese_trainer.hub_models import hub_offline

# Trainer state that is not part of the released model.
IGNORED_FOR_RELEASE = ["checkpoint-*", "checkpoint-*/**", "runs/**", "training_args.bin", "*.pt"]


class PushError(RuntimeError):
    """Pushing is impossible or failed; the message says why and how to retry, never the token."""


def check_push_ready(hub_model_id: str | None, token: str | None = None) -> str:
    """Raise :class:`PushError` unless ``hub_model_id`` can be pushed now; returns the account name."""
    if not hub_model_id:
        raise PushError("push_to_hub needs hub_model_id (e.g. your-name/model-name)")
    if hub_offline():
        raise PushError("push_to_hub: working offline (HF_HUB_OFFLINE=1, or the Hub is unreachable); "
                        "connect and unset HF_HUB_OFFLINE, or set push_to_hub: false")
    token = token or get_token()
    if token is None:
        raise PushError("push_to_hub: no Hugging Face token found; run `hf auth login` or set HF_TOKEN")
    try:
        account = HfApi(token=token).whoami()
    except Exception as error:  # noqa: BLE001 - any failure means we cannot push
        raise PushError(f"push_to_hub: the Hub is not reachable with your token ({describe_error(error, token)}); "
                        "check the network and the token, or set push_to_hub: false") from None
    return account.get("name", "")


def push_model_dir(model_dir: str | Path, hub_model_id: str, private: bool | None = None, token: str | None = None,
                   commit_message: str = "Upload sentence-transformers model trained with ese-trainer") -> str:
    """Upload ``model_dir`` (without checkpoints) to ``hub_model_id``; returns the commit URL."""
    model_dir = Path(model_dir)
    for required in ("modules.json", "config.json", "README.md"):
        if not (model_dir / required).is_file():
            raise PushError(f"{model_dir} is not a finished run folder: {required} is missing")
    token = token or get_token()
    retry = f"python recipes/push_to_hub.py --model_dir {model_dir} --hub_model_id {hub_model_id}"
    api = HfApi(token=token)
    try:
        api.create_repo(hub_model_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(repo_id=hub_model_id, folder_path=str(model_dir), repo_type="model",
                                   ignore_patterns=IGNORED_FOR_RELEASE, commit_message=commit_message)
    except Exception as error:  # noqa: BLE001 - reported with the way to retry
        raise PushError(f"pushing {model_dir} to {hub_model_id} failed ({describe_error(error, token)}); "
                        f"the local folder is intact. Retry with: {retry}") from None
    return str(getattr(commit, "commit_url", commit))
