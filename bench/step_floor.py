"""The compute floor of a BERT encoder's step: its actual GEMMs at this machine's measured rates, plus the optimizer's
memory traffic at the measured memory bandwidth.

Per layer and packed batch of ``N`` real tokens (hidden ``H``, feed-forward ``I``, ``A`` heads of ``d``): the linear
GEMMs ``N x H x 3H`` (query, key and value in one, as the recipe's encoder runs them:
``ese_trainer/modeling/fused_qkv.py``; ``fused_qkv=False``: three ``N x H x H``, as BERT runs them), ``N x H x H``
(the attention output), ``N x H x I`` and ``N x I x H``; backward, for each, the input's
gradient ``N x out x in`` and the weight's ``out x N x in``; attention's score and context GEMMs per text of real
length ``L`` (``L x d x L`` and ``L x L x d`` per head; backward twice those). Each GEMM shape's rate is measured
(best of ``repeats``) at the median batch's token count and the median text length, and every batch's FLOPs of that
shape run at it. Elementwise work, norms, softmax, dropout, the loss's small GEMMs and the embedding table are left
out: the floor is what the matmuls alone would take. The optimizer floor is fused AdamW's and clipping's bytes per
trained parameter (:data:`OPTIMIZER_BYTES_PER_PARAMETER`) over a measured copy bandwidth.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch

# fp32 AdamW (fused): read param, grad, exp_avg, exp_avg_sq, write param, exp_avg, exp_avg_sq (28 B); clip_grad_norm_:
# read the grads for the norm, then scale them in place (12 B). zero_grad(set_to_none=True) moves nothing.
OPTIMIZER_BYTES_PER_PARAMETER = 40


def best_seconds(run: Callable[[], object], repeats: int = 10, inner: int = 5) -> float:
    """The best mean time of ``inner`` calls of ``run`` over ``repeats`` tries (after one untimed call)."""
    run()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(inner):
            run()
        best = min(best, (time.perf_counter() - started) / inner)
    return best


def linear_shapes(config, tokens: int, backward: bool, fused_qkv: bool = True) -> list[tuple[str, int, int, int]]:
    """``(name, m, k, n)`` of one layer's linear GEMMs (``m x k`` times ``k x n``) for ``tokens`` packed tokens."""
    hidden, inner = config.hidden_size, config.intermediate_size
    projections = [("qkv", tokens, hidden, 3 * hidden)] if fused_qkv else [("q, k, v", tokens, hidden, hidden)] * 3
    forward = [*projections, ("attention output", tokens, hidden, hidden), ("ffn up", tokens, hidden, inner),
               ("ffn down", tokens, inner, hidden)]
    if not backward:
        return forward
    grads = []
    for name, m, k, n in forward:
        grads += [(f"{name} (input grad)", m, n, k), (f"{name} (weight grad)", n, m, k)]
    return forward + grads


def attention_flops(config, lengths: Sequence[int], backward: bool) -> float:
    """Score and context GEMM FLOPs of one layer over texts of these real ``lengths`` (``2 x 2 L^2 d`` per head
    forward, twice that backward)."""
    heads = config.num_attention_heads
    head_dim = config.hidden_size // heads
    forward = sum(2 * 2 * length * length * head_dim * heads for length in lengths)
    return forward * (3 if backward else 1)


def gemm_floor(config, batches: Sequence[Sequence[int]], bf16: bool, backward: bool = True, repeats: int = 10,
               fused_qkv: bool = True) -> dict:
    """The GEMM floor of running ``batches`` (each a list of real text lengths) through the encoder of ``config``:
    FLOPs and seconds per kind of GEMM at the measured rates (see the module docstring), and their sum."""
    dtype = torch.bfloat16 if bf16 else torch.float32
    layers = config.num_hidden_layers
    typical_tokens = int(statistics.median(sum(batch) for batch in batches))
    typical_length = int(statistics.median(length for batch in batches for length in batch))
    rates: dict[str, float] = {}
    for name, m, k, n in linear_shapes(config, typical_tokens, backward, fused_qkv):
        if name not in rates:
            a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
            rates[name] = 2 * m * k * n / best_seconds(lambda a=a, b=b: a @ b, repeats)
    heads = config.num_attention_heads
    texts = max(1, round(typical_tokens / typical_length))
    q = torch.randn(texts * heads, typical_length, config.hidden_size // heads, dtype=dtype)
    rates["attention"] = (2 * 2 * texts * heads * typical_length ** 2 * q.shape[-1]
                          / best_seconds(lambda: torch.bmm(torch.bmm(q, q.transpose(1, 2)), q), repeats))
    flops: dict[str, float] = dict.fromkeys(rates, 0.0)
    for batch in batches:
        for name, m, k, n in linear_shapes(config, sum(batch), backward, fused_qkv):
            flops[name] += 2 * m * k * n * layers
        flops["attention"] += attention_flops(config, batch, backward) * layers
    seconds = {name: flops[name] / rates[name] for name in flops}
    return {"dtype": str(dtype).removeprefix("torch."), "backward": backward, "typical_tokens": typical_tokens,
            "typical_length": typical_length, "flops_per_second": rates, "flops": flops, "seconds": seconds,
            "total_flops": sum(flops.values()), "total_seconds": sum(seconds.values())}


def copy_bandwidth(megabytes: int = 256, repeats: int = 10) -> float:
    """This machine's memory bandwidth in bytes/s, from the best in-place copy of a ``megabytes`` fp32 buffer
    (bytes read plus bytes written)."""
    source = torch.randn(megabytes * 2**20 // 4)
    target = torch.empty_like(source)
    return 2 * source.numel() * 4 / best_seconds(lambda: target.copy_(source), repeats, inner=2)


def optimizer_floor(parameters: int, steps: int) -> dict:
    """The optimizer's memory traffic over ``steps`` steps of ``parameters`` trained fp32 parameters, and the
    seconds it takes at the measured bandwidth."""
    bandwidth = copy_bandwidth()
    traffic = OPTIMIZER_BYTES_PER_PARAMETER * parameters * steps
    return {"parameters": parameters, "bytes_per_parameter": OPTIMIZER_BYTES_PER_PARAMETER, "bytes": traffic,
            "bandwidth_bytes_per_second": bandwidth, "seconds": traffic / bandwidth}


def floor_table(gemms: dict, optimizer: dict | None = None) -> list[str]:
    """Markdown rows: each kind of GEMM's work, measured rate and seconds, the optimizer's traffic, the total."""
    lines = ["| part of the floor | work | measured rate | seconds |", "|---|---|---|---|"]
    lines += [f"| GEMM: {kind} | {gemms['flops'][kind] / 1e9:.1f} GFLOP | {gemms['flops_per_second'][kind] / 1e9:.0f} "
              f"GFLOP/s | {seconds:.2f} |" for kind, seconds in gemms["seconds"].items()]
    total = gemms["total_seconds"]
    if optimizer is not None:
        lines.append(f"| optimizer memory traffic | {optimizer['bytes'] / 1e9:.2f} GB | "
                     f"{optimizer['bandwidth_bytes_per_second'] / 1e9:.1f} GB/s | {optimizer['seconds']:.2f} |")
        total += optimizer["seconds"]
    return [*lines, f"| **total** | | | **{total:.2f}** |"]


def paired_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> dict:
    """Run-to-run spread of a ratio: ``numerator_i / denominator_i`` of runs taken side by side (the same repeat of
    an alternating benchmark): median, min, max and the count."""
    ratios = [a / b for a, b in zip(numerators, denominators)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "repeats": len(ratios)}


def describe_ratio(ratio: dict, percent_over: bool = False) -> str:
    """``2.46x (2.40-2.51, 3 runs)`` or, for an overhead, ``0.4% (-1.2% to 1.9%, 3 runs)``."""
    if percent_over:
        low, high = 100 * (ratio["min"] - 1), 100 * (ratio["max"] - 1)
        return f"{100 * (ratio['median'] - 1):.1f}% ({low:.1f}% to {high:.1f}%, {ratio['repeats']} runs)"
    return f"{ratio['median']:.2f}x ({ratio['min']:.2f}-{ratio['max']:.2f}, {ratio['repeats']} runs)"
