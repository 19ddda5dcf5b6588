"""Run under ``accelerate launch`` (2 CPU processes) by test_scale_out.py: one training step of a tiny BERT.

Modes: ``gather`` (in-batch negatives over both processes), ``cached`` (the same with GradCache mini-batches of 4
texts), ``local`` (each process its own). Writes, from the main process, the world size, the logged loss and
every parameter's change to the file given as the first argument.
"""

import sys

import torch
import torch.distributed as dist

from tests.scale_out_common import ROWS_PER_PROCESS, one_sgd_step

if __name__ == "__main__":
    output_path, mode = sys.argv[1], sys.argv[2]
    cache = {"ibn_cache": True, "cache_minibatch_texts": 4} if mode == "cached" else {}
    result = one_sgd_step(per_device_rows=ROWS_PER_PROCESS, gather_across_devices=mode != "local", **cache)
    if dist.get_rank() == 0:
        torch.save({"world_size": dist.get_world_size(), **result}, output_path)
    dist.barrier()
    dist.destroy_process_group()
