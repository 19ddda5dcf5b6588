"""bench/gpu_checks.sh: without a GPU it stops at once with a clear message; its bf16 check, the one that needs no GPU,
runs end to end on CPU (a straight run, a resume from its checkpoint, the record and the verdict)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from .conftest import REPO, build_tiny_bert

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")


def test_without_a_gpu_the_script_stops_at_once_saying_why():
    result = subprocess.run(["bash", str(REPO / "bench" / "gpu_checks.sh")], cwd=REPO, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 2
    assert "sees no CUDA GPU" in result.stderr and "FSDP and DeepSpeed run only on GPUs" in result.stderr
    assert result.stdout == ""  # nothing ran


def test_the_bf16_check_runs_and_resumes_on_cpu(tmp_path, tokenizer):
    start = tmp_path / "start"
    build_tiny_bert(len(tokenizer), seed=0).save_pretrained(start)
    tokenizer.save_pretrained(start)
    output = tmp_path / "records"
    result = subprocess.run(
        [sys.executable, "-m", "bench.gpu_checks", "--cpu", "--steps", "2", "--output", str(output), "--",
         "--model_name_or_path", str(start), "--max_train_samples", "16", "--per_device_train_batch_size", "8"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert sorted(path.name for path in output.glob("*.json")) == ["bf16.json"]  # FSDP2 and ZeRO-2 need a GPU
    record = json.loads((output / "bf16.json").read_text())
    assert record["holds"] and record["ran"] == {"strategy": "single process", "accelerator.distributed_type": "NO",
                                                 "accelerator.mixed_precision": "bf16"}
    assert record["resumed_from"]["global_step"] == 1 and record["resumed_from"]["changes"] == {}
    assert record["global_step"] == 2 and record["resumed_vs_straight_largest_difference"] >= 0
    [earlier] = record["run_info"]["earlier_runs"]
    assert earlier["run_info"]["strategy"]["accelerator"]["mixed_precision"] == "bf16"
    assert "| bf16 | yes |" in (output / "summary.md").read_text()
