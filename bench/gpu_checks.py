"""The recipe on one GPU under each strategy it claims, each resumed once: FSDP2 through the Trainer, DeepSpeed ZeRO-2,
and plain bf16.

    bash bench/gpu_checks.sh                              # on a machine with a CUDA GPU
    python -m bench.gpu_checks [--checks fsdp2 zero2 bf16] [--steps 6] [--output bench/results/gpu_checks]
                               [-- recipe arguments, e.g. --model_name_or_path /path]

For each check, ``accelerate launch --num_processes 1`` runs ``recipes/train_nli.py`` on ``configs/smoke_snli.yaml``
(all-MiniLM-L6-v2 on SNLI, bf16) for ``--steps`` optimizer steps with a checkpoint half-way and no evaluation
(``sts_tasks: none``), then runs it again from that checkpoint (``--resume_from_checkpoint``, the same output folder)
to the same step. The record, ``<output>/<check>.json``, holds the resumed run's ``run_info.json`` (which keeps the
first run's under ``earlier_runs``), what the check expects of it (the Trainer's accelerator ran FSDP version 2, or
DeepSpeed at ZeRO stage 2, or bf16 mixed precision; the resume started from the checkpoint with no change) and whether
it holds, and the largest difference between the resumed run's released weights and the straight run's
(bf16 kernels need not be bitwise reproducible, so this is a record, not a pass mark). ``summary.md`` lists them.
The exit status is 0 only when every check ran and holds.

Without a CUDA GPU it stops at once (exit 2) saying so; ``--cpu`` runs the checks that need no GPU (bf16) on CPU, so
that the script itself is tested.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "recipes" / "accelerate_configs"
CHECKS = {  # accelerate config, and what run_info.json must show the Trainer's accelerator ran
    "fsdp2": (CONFIGS / "fsdp.yaml", {"strategy": "fsdp", "accelerator.distributed_type": "FSDP",
                                      "accelerator.fsdp_version": 2, "accelerator.mixed_precision": "bf16"}),
    "zero2": (CONFIGS / "deepspeed_zero2.yaml", {"strategy": "deepspeed", "accelerator.distributed_type": "DEEPSPEED",
                                                 "accelerator.zero_stage": 2, "accelerator.mixed_precision": "bf16"}),
    "bf16": (CONFIGS / "single_process.yaml", {"strategy": "single process", "accelerator.distributed_type": "NO",
                                               "accelerator.mixed_precision": "bf16"}),
}
GPU_ONLY = ("fsdp2", "zero2")  # accelerate attaches FSDP and DeepSpeed to GPU-like devices only
NEEDS = {"zero2": "deepspeed"}  # a check's own package
RUN = ["--config", "configs/smoke_snli.yaml", "--bf16", "true", "--eval_strategy", "no", "--eval_on_start", "false",
       "--load_best_model_at_end", "false", "--sts_tasks", "none", "--suite_before_training", "false",
       "--logging_steps", "1", "--save_strategy", "steps", "--save_total_limit", "3"]


def no_gpu_message() -> str | None:
    """Why the checks cannot run here (no CUDA GPU), or None."""
    import torch

    if torch.cuda.is_available():
        return None
    return (f"bench/gpu_checks: torch {torch.__version__} sees no CUDA GPU, and FSDP and DeepSpeed run only on GPUs "
            "(accelerate attaches them to GPU-like devices); run it on a GPU machine (--cpu runs the bf16 check "
            "on CPU, to test the script)")


def launch(config: Path, output_dir: Path, steps: int, cpu: bool, extra: list[str]) -> subprocess.CompletedProcess:
    """The recipe under ``accelerate launch --config_file config --num_processes 1``; its output goes to
    ``output_dir/../<name>.log``."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--num_processes",
               "1", *(["--cpu"] if cpu else []), str(REPO / "recipes" / "train_nli.py"), *RUN, "--max_steps",
               str(steps), "--save_steps", str(steps // 2), "--output_dir", str(output_dir),
               *(["--use_cpu", "true"] if cpu else []), *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    log = output_dir.parent / f"{output_dir.name}{'.resumed' if '--resume_from_checkpoint' in extra else ''}.log"
    log.write_text(f"$ {' '.join(command)}\n\n{result.stdout}\n{result.stderr}")
    return result


def failure(run: str, result: subprocess.CompletedProcess) -> str:
    """The run's exit status and its own ``error:`` line (else the last line it wrote)."""
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    said = next((line for line in lines if line.startswith("error:")), lines[-1] if lines else "")
    return f"the {run} run exited {result.returncode}: {said}"


def _get(record: dict, dotted: str):
    for key in dotted.split("."):
        record = record.get(key) if isinstance(record, dict) else None
    return record


def largest_difference(path, reference) -> float:
    """The largest absolute difference of any weight between two safetensors files."""
    from safetensors.torch import load_file

    weights, expected = load_file(str(path)), load_file(str(reference))
    return max((weights[name].float() - tensor.float()).abs().max().item() for name, tensor in expected.items())


def run_check(name: str, work: Path, steps: int, cpu: bool, extra: list[str]) -> dict:
    """One check: the straight run, the resumed run, what ran and whether it is what the check expects."""
    config, expected = CHECKS[name]
    output_dir = work / name
    record: dict = {"check": name, "accelerate_config": str(config.relative_to(REPO)), "steps": steps,
                    "expected": expected}
    straight = launch(config, output_dir, steps, cpu, extra)
    if straight.returncode != 0:
        return {**record, "holds": False, "error": failure("straight", straight)}
    shutil.copy(output_dir / "model.safetensors", work / f"{name}.straight.safetensors")
    checkpoint = output_dir / f"checkpoint-{steps // 2}"
    resumed = launch(config, output_dir, steps, cpu, [*extra, "--resume_from_checkpoint", str(checkpoint)])
    if resumed.returncode != 0:
        return {**record, "holds": False, "error": failure("resumed", resumed)}
    run_info = json.loads((output_dir / "run_info.json").read_text())
    state = json.loads((output_dir / "trainer_state.json").read_text())
    ran = {key: _get(run_info["strategy"], key) for key in expected}
    resume = run_info.get("resumed_from", {})
    holds = (ran == expected and resume.get("checkpoint") == str(checkpoint) and resume.get("changes") == {}
             and state["global_step"] == steps)
    return {**record, "ran": ran, "holds": holds, "resumed_from": resume, "global_step": state["global_step"],
            "resumed_vs_straight_largest_difference": largest_difference(output_dir / "model.safetensors",
                                                                         work / f"{name}.straight.safetensors"),
            "run_info": run_info}


def summary(records: list[dict], machine: str) -> str:
    lines = [f"# GPU checks\n\n{machine}\n", "| check | holds | ran | resumed from step | largest weight difference, "
             "resumed vs straight |", "|---|---|---|---|---|"]
    for record in records:
        ran = ", ".join(f"{key.removeprefix('accelerator.')}={value}" for key, value in record.get("ran", {}).items())
        difference = record.get("resumed_vs_straight_largest_difference")
        lines.append(f"| {record['check']} | {'yes' if record['holds'] else 'NO'} | {ran or record.get('error', '')} "
                     f"| {record.get('resumed_from', {}).get('global_step', '')} | "
                     f"{'' if difference is None else f'{difference:.3g}'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checks", nargs="+", choices=list(CHECKS), default=list(CHECKS))
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per run (a checkpoint at half)")
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "gpu_checks")
    parser.add_argument("--cpu", action="store_true", help="run the checks that need no GPU on CPU")
    arguments, extra = parser.parse_known_args(argv)
    extra = [item for item in extra if item != "--"]
    if arguments.steps < 2:
        parser.error("--steps must be at least 2 (a checkpoint half-way)")
    message = no_gpu_message()
    if message and not arguments.cpu:
        print(message, file=sys.stderr)
        return 2
    checks = [name for name in arguments.checks if not (arguments.cpu and name in GPU_ONLY)]
    if not checks:
        print("bench/gpu_checks: every check asked for needs a GPU", file=sys.stderr)
        return 2
    import importlib.util

    from bench.machine import describe_machine

    arguments.output.mkdir(parents=True, exist_ok=True)
    records = []
    with tempfile.TemporaryDirectory(prefix="gpu_checks_") as work:
        for name in checks:
            if name in NEEDS and importlib.util.find_spec(NEEDS[name]) is None:
                record = {"check": name, "holds": False, "error": f"{NEEDS[name]} is not installed"}
            else:
                record = run_check(name, Path(work), arguments.steps, arguments.cpu, extra)
                for log in Path(work).glob(f"{name}*.log"):
                    shutil.copy(log, arguments.output / log.name)
            (arguments.output / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
            print(f"{name}: {'holds' if record['holds'] else 'does NOT hold'} "
                  f"{record.get('ran', record.get('error', ''))}", flush=True)
            records.append(record)
    table = summary(records, describe_machine())
    (arguments.output / "summary.md").write_text(table)
    print(table)
    return 0 if all(record["holds"] for record in records) else 1


if __name__ == "__main__":
    sys.exit(main())
