"""GPU training throughput, BERT-base shapes in bf16: ours packed vs. ours padded vs. sentence-transformers.

    make gpu-wheels                                    # here: the stack and tokenizer the GPU image lacks
    bash bench/gpu_throughput.sh                       # on a machine with a CUDA GPU
    python -m bench.gpu_throughput [--device cuda] [--steps 30] [--batch 512] [--repeats 3] [--peak_tflops 989]

Every contender trains the same randomly initialised BERT-base (``BertConfig()``: 12 x 768, 110M parameters; weights
do not change the speed, so nothing is downloaded) from the same seed, on the same SNLI (premise, entailment)
pairs, ``batch`` pairs a step, with the same loss (in-batch negatives, scale 20, mean pooling), AdamW and bf16
autocast; the contenders alternate ``repeats`` times after ``warmup`` steps each, and the median run counts:

- **ours, packed**: :class:`~ese_trainer.modeling.encoding.SentenceEncoder` padding-free: the batch's real tokens as
  one row, attention through flash-attn's varlen kernels (``flash_attention_2``) when flash-attn is installed,
  otherwise through ``packed_sdpa``;
- **ours, padded**: the same encoder on padded batches, with PyTorch SDPA;
- **sentence-transformers**: a ``SentenceTransformer`` (Transformer + mean Pooling) of the same weights, its own
  tokenisation, with flash-attn 2 when installed, otherwise SDPA.

sentence-transformers 6 has a padding-free path of its own: with ``attn_implementation="flash_attention_2"`` (flash-attn
installed, or the ``kernels`` package, which fetches its kernel from the Hub) its ``Transformer`` module flattens
each batch (``unpad_inputs``, on by default where possible: transformers' ``DataCollatorWithFlattening``, one row of
real tokens with ``cu_seq_lens``) and runs flash-attn's varlen kernels, as ours does then. The record says whether it
took that path (``st_padding_free``). On the GPU image neither package is there and neither can be fetched (a
flash-attn wheel is far over the 64 MiB that travels with the tree), so there it runs padded SDPA, and ours runs
``packed_sdpa`` (SDPA over length groups, :mod:`ese_trainer.modeling.packing`).

The GPU image has torch 2.11, transformers 5.17 and sentence-transformers 6.0.1 and reaches no network. The script
runs this source tree (``PYTHONPATH``, not an install, so ``setup.cfg``'s ``torch>=2.13`` does not apply) with the
image's torch and, over the image's, the wheels ``make gpu-wheels`` fetched here into ``build/gpu_stack/wheels``:
transformers, sentence-transformers, huggingface_hub and tokenizers at the versions the tests run on, and what they
need that the image lacks (kernels, tomlkit, httpx2, httpcore2, truststore, click); no torch, 22 MiB. The tokenizer
comes from ``build/gpu_stack/tokenizer`` (written by the same target: the Hub id resolves only where the bundled
model package is installed). Carry ``build/gpu_stack`` with the tree. Checked on CPU (no GPU here): over a venv
holding the image's transformers 5.17, sentence-transformers 6.0.1, huggingface_hub 1.33 and tokenizers 0.23.2, the
carried wheels run this script (``--small``); so do the image's own packages alone, which the shell script falls back
to, saying so, if the wheels do not install. torch 2.11 itself was not at hand (torch 2.13 ran).

Reports real (non-padding) tokens/s per contender, the ratios, and MFU: ``6 x non-embedding parameters`` FLOPs per
real token (forward and backward; attention's own FLOPs left out) over the GPU's dense bf16 peak (``--peak_tflops``;
known for H100/H200/A100) and over a measured bf16 matmul rate. Without a GPU it runs on CPU with ``--small`` (a
4-layer 256-wide BERT) so that the script itself is tested. The default batch (512 pairs, 1,024 texts) fills an H100
the way a real run would; 30 steps, 3 repeats of 3 contenders run in a few minutes there (under 8 with start-up).
SNLI's dev and test splits hold about 6,700 entailment pairs; longer runs cycle through them again.
Results: ``bench/results/gpu_throughput.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.machine import describe_machine
from bench.train_throughput import non_embedding_parameters, real_token_count

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
SCALE = 20.0
# BERT's uncased WordPiece vocabulary (30,522) is all-MiniLM-L6-v2's: the folder `make gpu-wheels` saves it to (the
# GPU image has no Hub access and no bundled model), else its Hub id (resolves offline where the model package is)
GPU_STACK = REPO / "build" / "gpu_stack"
TOKENIZER_FOLDER = GPU_STACK / "tokenizer"
TOKENIZER = str(TOKENIZER_FOLDER) if TOKENIZER_FOLDER.is_dir() else "sentence-transformers/all-MiniLM-L6-v2"
SHAPE_KEYS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size")
# dense bf16 tensor-core peaks (TFLOP/s) from the vendors' datasheets, matched against torch.cuda.get_device_name
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100 SXM": 989.4, "H100 80GB HBM3": 989.4, "H100 PCIe": 756.0, "H100": 756.0,
                    "A100": 312.0, "L40S": 362.0, "A10G": 70.0}


def snli_pairs(count: int) -> list[tuple[str, str]]:
    """``count`` (premise, entailment hypothesis) pairs of the embedded SNLI dev and test splits, in order, from the
    start again when they run out (texts for timing only: nothing is scored)."""
    snli, pairs = REPO / "data" / "SNLI", []
    for split in ("dev", "test"):
        premises, hypotheses, labels = ((snli / f"{name}.{split}").read_text().splitlines()
                                        for name in ("s1", "s2", "labels"))
        pairs += [(p.strip(), h.strip()) for p, h, label in zip(premises, hypotheses, labels) if label == "entailment"]
    return (pairs * math.ceil(count / len(pairs)))[:count]


def in_batch_loss(anchors: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Multiple-negatives ranking loss: cross-entropy over ``SCALE x cos(a_i, p_j)``, the diagonal as target."""
    scores = SCALE * F.normalize(anchors.float(), dim=-1) @ F.normalize(positives.float(), dim=-1).T
    return F.cross_entropy(scores, torch.arange(len(scores), device=scores.device))


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given is not None or device.type != "cuda":
        return given
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def matmul_tflops(device: torch.device, size: int) -> float:
    """The best measured bf16 matmul rate on ``device`` (``size`` square), TFLOP/s."""
    a, b = (torch.randn(size, size, device=device, dtype=torch.bfloat16) for _ in range(2))
    best = float("inf")
    for _ in range(10):
        synchronize(device)
        started = time.perf_counter()
        for _ in range(10):
            a @ b
        synchronize(device)
        best = min(best, (time.perf_counter() - started) / 10)
    return 2 * size**3 / best / 1e12


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def attention_for_padded(device: torch.device) -> str:
    """sentence-transformers' attention on ``device``: flash-attn 2 (padded inputs) where our packed rows get its
    varlen kernels, else SDPA."""
    from ese_trainer.modeling.packing import FLASH_VARLEN, packed_attention_name

    return FLASH_VARLEN if packed_attention_name(device) == FLASH_VARLEN else "sdpa"


class Contender:
    """One way of training: ``embed(texts)`` gives embeddings with gradients, ``step`` takes an optimizer step."""

    def __init__(self, name: str, model: torch.nn.Module, embed: Callable[[list[str]], torch.Tensor], device):
        self.name, self.model, self.embed, self.device = name, model, embed, device
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step(self, pairs: list[tuple[str, str]]) -> None:
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            embeddings = self.embed([a for a, _ in pairs] + [p for _, p in pairs])
        loss = in_batch_loss(*embeddings.chunk(2))
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def run(self, batches: list[list[tuple[str, str]]]) -> float:
        synchronize(self.device)
        started = time.perf_counter()
        for batch in batches:
            self.step(batch)
        synchronize(self.device)
        return time.perf_counter() - started


def build_contenders(model_dir: str, device: torch.device) -> list[Contender]:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import AutoModel, AutoTokenizer

    from ese_trainer.modeling.encoding import SentenceEncoder

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    contenders = []
    for name, packed in (("ours, packed", True), ("ours, padded", False)):
        model = AutoModel.from_pretrained(model_dir, attn_implementation="sdpa").to(device).train()
        encoder = SentenceEncoder(model, "mean", forward_chunks=1, packed=packed)

        def embed(texts: list[str], encoder=encoder) -> torch.Tensor:
            features = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
            return encoder({key: value.to(device) for key, value in features.items()}).embeddings

        contenders.append(Contender(name, model, embed, device))
    transformer = Transformer(model_dir, max_seq_length=128,
                              model_kwargs={"attn_implementation": attention_for_padded(device)})
    st_model = SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean")],
                                   device=str(device)).train()

    def st_embed(texts: list[str]) -> torch.Tensor:
        features = {key: value.to(device) if isinstance(value, torch.Tensor) else value
                    for key, value in st_model.preprocess(texts).items()}
        return st_model(features)["sentence_embedding"]

    contenders.append(Contender("sentence-transformers", st_model, st_embed, device))
    return contenders


def main() -> None:
    from transformers import AutoTokenizer, BertConfig, BertModel

    from ese_trainer.hub_models import resolve_model_path
    from ese_trainer.modeling.packing import packed_attention_name

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=512, help="pairs a step (2 x batch texts)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peak_tflops", type=float, default=None, help="dense bf16 peak, if not a known GPU")
    parser.add_argument("--small", action="store_true", help="a 4 x 256 BERT (the script's own CPU test)")
    parser.add_argument("--tokenizer", default=TOKENIZER, help="BERT uncased WordPiece (30,522): a folder or Hub id")
    parser.add_argument("--output_dir", default=str(RESULTS))
    args = parser.parse_args()
    device = torch.device(args.device)

    torch.manual_seed(0)
    shape = {"num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 1024} \
        if args.small else {}
    config = BertConfig(**shape)  # defaults: BERT-base
    with tempfile.TemporaryDirectory() as model_dir:
        BertModel(config, add_pooling_layer=False).save_pretrained(model_dir)
        # a tokenizer folder as is (it has no model config); a Hub id resolved offline
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer if Path(args.tokenizer).is_dir()
                                                  else resolve_model_path(args.tokenizer))
        tokenizer.save_pretrained(model_dir)
        contenders = build_contenders(model_dir, device)
    pairs = snli_pairs((args.steps + args.warmup) * args.batch)
    batches = [pairs[i:i + args.batch] for i in range(0, len(pairs), args.batch)]
    warmup, timed = batches[:args.warmup], batches[args.warmup:]
    texts = [text for batch in timed for pair in batch for text in pair]
    real_tokens = real_token_count(tokenizer, texts)

    for contender in contenders:
        contender.run(warmup)
    seconds: dict[str, list[float]] = {contender.name: [] for contender in contenders}
    for repeat in range(args.repeats):
        for contender in contenders:
            seconds[contender.name].append(contender.run(timed))
            print(f"repeat {repeat + 1}: {contender.name} {seconds[contender.name][-1]:.2f} s", flush=True)

    flops_per_token = 6 * non_embedding_parameters(contenders[0].model)
    tokens_per_second = {name: real_tokens / statistics.median(times) for name, times in seconds.items()}
    peak = peak_tflops(device, args.peak_tflops)
    measured = matmul_tflops(device, 512 if args.small else 8192)
    mfu = {name: rate * flops_per_token / 1e12 / peak for name, rate in tokens_per_second.items()} if peak else None
    of_measured = {name: rate * flops_per_token / 1e12 / measured for name, rate in tokens_per_second.items()}
    ratios = {"ours, packed / sentence-transformers": tokens_per_second["ours, packed"]
              / tokens_per_second["sentence-transformers"],
              "ours, packed / ours, padded": tokens_per_second["ours, packed"] / tokens_per_second["ours, padded"]}
    command = " ".join(["python -m bench.gpu_throughput", f"--device {args.device}", f"--steps {args.steps}",
                        f"--batch {args.batch}", f"--repeats {args.repeats}"]
                       + (["--small"] if args.small else [])
                       + ([f"--peak_tflops {args.peak_tflops}"] if args.peak_tflops else []))
    attention = {"ours, packed": packed_attention_name(device), "ours, padded": "sdpa",
                 "sentence-transformers": attention_for_padded(device)}
    import sentence_transformers
    import transformers

    st_transformer = contenders[-1].model[0]
    record = {"command": command, "machine": describe_machine(),
              "versions": {"transformers": transformers.__version__,
                           "sentence-transformers": sentence_transformers.__version__},
              "st_padding_free": bool(getattr(st_transformer, "can_flatten_inputs", False)),
              "model_shape": {key: getattr(config, key) for key in SHAPE_KEYS},
              "pairs_per_step": args.batch, "steps": args.steps, "real_tokens": real_tokens,
              "attention": attention, "seconds": seconds, "real_tokens_per_second": tokens_per_second,
              "ratios": ratios, "peak_bf16_tflops": peak, "measured_bf16_matmul_tflops": measured,
              "mfu": mfu, "share_of_measured_matmul_rate": of_measured}
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "gpu_throughput.json").write_text(json.dumps(record, indent=2) + "\n")
    rows = ["| contender | attention | real tokens/s | MFU (of peak) | of measured matmul rate | runs (s) |",
            "|---|---|---|---|---|---|"]
    rows += [f"| {name} | {attention[name]} | {rate:,.0f} | "
             + (f"{mfu[name]:.1%}" if mfu else "n/a") + f" | {of_measured[name]:.1%} | "
             + ", ".join(f"{t:.2f}" for t in seconds[name]) + " |" for name, rate in tokens_per_second.items()]
    summary = "\n".join([
        f"# GPU training throughput ({'4 x 256 BERT' if args.small else 'BERT-base'}, bf16 autocast)", "",
        f"Command: `{command}`  ", f"Machine: {record['machine']}", "",
        f"{args.steps} steps of {args.batch} SNLI pairs, {real_tokens} real tokens; peak "
        + (f"{peak} TFLOP/s" if peak else "unknown") + f", measured bf16 matmul {measured:.1f} TFLOP/s; "
        f"transformers {transformers.__version__}, sentence-transformers {sentence_transformers.__version__} "
        f"(its own padding-free path: {'yes' if record['st_padding_free'] else 'no'}).", "",
        *rows, "", *(f"- {name}: **{value:.2f}x**" for name, value in ratios.items()), ""])
    (output_dir / "gpu_throughput.md").write_text(summary)
    print(summary)


if __name__ == "__main__":
    main()
