"""Run under ``torchrun --nproc_per_node 2`` (CPU, gloo) by test_scale_out.py: FSDP2 over the training model.

For the dense and the MoE tiny encoder, :func:`tests.scale_out_common.fsdp_steps` shards every unit accelerate's
FSDP2 transformer policy picks (from ``recipes/accelerate_configs/fsdp.yaml``) and the whole model with
``fully_shard`` on a 2-rank CPU mesh, then trains 3 AdamW steps, each rank on its half of the global batch. The main
process saves both runs' results to the file given as the first argument.
"""

import sys

import torch
import torch.distributed as dist

from tests.scale_out_common import fsdp_steps

if __name__ == "__main__":
    dist.init_process_group("gloo")
    results = {kind: fsdp_steps(kind, shard=True) for kind in ("dense", "moe")}
    if dist.get_rank() == 0:
        torch.save(results, sys.argv[1])
    dist.barrier()
    dist.destroy_process_group()
