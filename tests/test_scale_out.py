"""Global-batch negatives: 2 gloo processes with gathering, and GradCache, each equal one full batch."""

import json
import os
import subprocess
import sys

import pytest
import torch
from sentence_transformers import SentenceTransformer

from ese_trainer.training.grad_cache import RandomState
from tests.conftest import REPO, small_sts_args
from tests.scale_out_common import ROWS_PER_PROCESS, one_sgd_step

CPU_2PROC = REPO / "recipes" / "accelerate_configs" / "cpu_2proc.yaml"


def accelerate_launch(*args, timeout=600, config_file=CPU_2PROC):
    """``accelerate launch --config_file cpu_2proc.yaml ...`` as the README writes it: no ACCELERATE_USE_CPU."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("ACCELERATE_USE_CPU", None)
    return subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
                           *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def assert_same_step(result, reference, tolerance=1e-5, relative=False):
    """Same logged loss, and every parameter's change within ``tolerance`` plus 1e-4 of the largest change of that
    parameter (float32 sums in another order differ in proportion to their size: the token-type embedding's
    gradient sums over every token); with ``relative`` ``tolerance`` itself scales with changes above 1 (steps whose
    gradients are large, e.g. an MoE encoder's router terms)."""
    assert result["loss"] == pytest.approx(reference["loss"], abs=1e-4)
    for name, delta in reference["deltas"].items():
        difference = (result["deltas"][name] - delta).abs().max().item()
        largest = delta.abs().max().item()
        bound = (tolerance * max(1.0, largest) if relative else tolerance) + 1e-4 * largest
        assert difference < bound, f"{name}: {difference} (largest change {largest})"


@pytest.fixture(scope="module")
def full_batch_step():
    """One process holding the whole global batch (2 x ROWS_PER_PROCESS pairs)."""
    return one_sgd_step(per_device_rows=2 * ROWS_PER_PROCESS)


def test_two_processes_with_gathering_equal_one_full_batch(full_batch_step, tmp_path):
    outputs = {}
    for mode in ("gather", "cached", "local"):
        result = accelerate_launch(str(REPO / "tests" / "scale_out_worker.py"), str(tmp_path / mode), mode)
        assert result.returncode == 0, result.stderr[-3000:]
        outputs[mode] = torch.load(tmp_path / mode)
    assert outputs["gather"]["world_size"] == 2
    assert_same_step(outputs["gather"], full_batch_step)
    # GradCache's unsynchronised passes, averaged by hand over the processes: the same step again.
    assert_same_step(outputs["cached"], full_batch_step)
    # Without gathering each process only sees its own pairs as negatives: a different step.
    with pytest.raises(AssertionError):
        assert_same_step(outputs["local"], full_batch_step)


@pytest.mark.parametrize("minibatch", [4, 5])  # texts per mini-batch: the rows' texts cut at any point
def test_grad_cache_equals_full_batch(full_batch_step, minibatch):
    cached = one_sgd_step(per_device_rows=2 * ROWS_PER_PROCESS, ibn_cache=True, cache_minibatch_texts=minibatch)
    assert_same_step(cached, full_batch_step)
    assert {"loss_cosent", "loss_ibn", "loss_angle"} <= set(cached["log"])


@pytest.mark.parametrize("model_kind,ese", [
    ("moe", None),  # router terms over every token of the batch
    ("dense", {"compression_target": "pca"}),  # layer terms, PCA target of the whole batch
    ("dense", {"compression_target": "moe", "head_expert_hidden": 16}),  # ESE's learned heads train too
])
def test_grad_cache_covers_the_whole_objective(model_kind, ese):
    full = one_sgd_step(2 * ROWS_PER_PROCESS, model_kind, ese)
    cached = one_sgd_step(2 * ROWS_PER_PROCESS, model_kind, ese, ibn_cache=True, cache_minibatch_texts=5)
    assert_same_step(cached, full, relative=True)
    heads = [name for name in full["deltas"] if name.startswith("objective.")]
    if ese and ese["compression_target"] == "moe":
        assert heads and any(full["deltas"][name].abs().sum() > 0 for name in heads)
    expected_terms = {"loss_router_aux"} if model_kind == "moe" else {"loss_ese", "loss_ese_prior"}
    assert expected_terms <= set(cached["log"])


def test_random_state_replays_dropout():
    dropout = torch.nn.Dropout(0.5)
    x = torch.ones(1000)
    state = RandomState(x)
    first = dropout(x)
    dropout(x)  # the generator moves on
    with state.restored():
        replay = dropout(x)
    assert torch.equal(first, replay)


def test_moe_recipe_under_accelerate_launch_two_processes(small_sts, tmp_path):
    """The recipe with an MoE encoder under DDP (2 gloo processes, find_unused_parameters off: every expert is
    in every graph), gathering across processes; the saved folder loads through sentence-transformers."""
    output_dir = tmp_path / "out"
    result = accelerate_launch(
        str(REPO / "recipes" / "train_nli.py"), "--config", "configs/moe_smoke.yaml", "--output_dir", str(output_dir),
        "--max_steps", "5", "--max_train_samples", "80", "--per_device_train_batch_size", "8",
        "--moe.num_experts", "8", "--moe.num_experts_per_tok", "1", "--moe.layers", "every_2",
        "--gather_across_devices", "true", *small_sts_args(small_sts),
        "--eval_on_start", "false", "--logging_steps", "1",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("STS (cosine Spearman") == 1  # evaluated and reported once, by the main process
    info = json.loads((output_dir / "run_info.json").read_text())
    assert info["world_size"] == 2 and info["global_train_batch_size"] == 16
    assert info["model_type"] == "ese_moe_bert"
    assert info["strategy"] == {"requested": "ddp", "strategy": "ddp", "distributed_type": "MULTI_CPU", "fsdp": False,
                                "zero_stage": None, "world_size": 2, "fallback": False,
                                "accelerator": {"distributed_type": "MULTI_CPU", "num_processes": 2,
                                                "mixed_precision": "no", "fsdp_version": None, "zero_stage": None},
                                "trained_by": {"wrapper": "DistributedDataParallel"}}
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 5
    train_logs = [entry for entry in state["log_history"] if "loss" in entry]
    assert all({"loss_ibn", "loss_router_aux", "loss_router_z"} <= set(entry) for entry in train_logs)
    utilisation = json.loads((output_dir / "expert_utilisation.json").read_text())
    assert set(utilisation["final"]["layers"]) == {"1", "3", "5"}
    for layer in utilisation["final"]["layers"].values():
        assert len(layer["shares"]) == 8 and abs(sum(layer["shares"]) - 1) < 1e-3
    assert (output_dir / "expert_utilisation.png").stat().st_size > 10_000
    assert set(json.loads((output_dir / "eval_results.json").read_text())) >= {"before", "after"}
    model = SentenceTransformer(str(output_dir), trust_remote_code=True, device="cpu")
    assert type(model[0].auto_model).__name__ == "MoEBertModel"
    card = (output_dir / "README.md").read_text()
    assert "## Mixture of Experts" in card and "trust_remote_code=True" in card and "| moe.num_experts | 8 |" in card
    shares = utilisation["final"]["layers"]["3"]["shares"]
    assert "| 3 | " + " | ".join(f"{share:.3f}" for share in shares) in card
    assert "Switch Transformers" in card and "ESE" not in card.split("## Citation")[1]



def _encoder_gradients(model_kind: str, cached: bool, seed: int) -> dict[str, torch.Tensor]:
    """The encoder's gradient for one batch of 12 SNLI rows under the defaults (dropout 0.1, the packed forward) from
    one seed, with GradCache over mini-batches of 7 texts, or (``cached=False``) the same mini-batches' forwards
    concatenated into one graph and back-propagated at once: the same random stream, so the same dropout masks."""
    from transformers import AutoTokenizer

    from ese_trainer.data.collator import RowCollator
    from ese_trainer.ese.arguments import ESEArguments
    from ese_trainer.hub_models import resolve_model_path
    from ese_trainer.losses.arguments import LossArguments
    from ese_trainer.modeling.encoding import EncodedBatch, SentenceEncoder
    from ese_trainer.training.build import build_objective
    from ese_trainer.training.grad_cache import cached_step, text_minibatches
    from ese_trainer.training.training_model import MODEL_INPUT_KEYS, row_batch
    from tests.conftest import MINILM_ID, build_tiny_bert, build_tiny_moe, snli_rows

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(MINILM_ID))
    model = (build_tiny_moe if model_kind == "moe" else build_tiny_bert)(len(tokenizer), seed=0, dropout=0.1)
    encoder = SentenceEncoder(model, "mean", packed=True).train()
    objective = build_objective(LossArguments(), ESEArguments(), model.config)
    inputs = RowCollator(tokenizer, 64)([dict(row) for row in snli_rows(12, seed=3)])
    minibatches = text_minibatches({key: inputs[key] for key in MODEL_INPUT_KEYS if key in inputs}, 7)
    assert len(minibatches) > 2

    def loss_of(encoded: EncodedBatch):
        return objective(encoded, row_batch(encoded.embeddings, inputs["other_row"], inputs["other_role"],
                                            inputs["other_score"], inputs.get("text_ids")))

    torch.manual_seed(seed)
    if cached:
        cached_step(encoder, loss_of, minibatches, lambda loss: loss.backward())
    else:
        parts = [encoder(minibatch) for minibatch in minibatches]
        router = None
        if parts[0].router_logits is not None:
            router = tuple(torch.cat(layer) for layer in zip(*(part.router_logits for part in parts)))
        whole = EncodedBatch(embeddings=torch.cat([part.embeddings for part in parts]),
                             layer_embeddings={}, router_logits=router)
        loss_of(whole).loss.backward()
    return {name: parameter.grad.clone() for name, parameter in model.named_parameters() if parameter.grad is not None}


@pytest.mark.parametrize("model_kind", ["dense", "moe"])
def test_grad_cache_replays_dropout_on_the_packed_path(model_kind):
    """GradCache under the defaults (dropout 0.1, packed): the gradient equals the uncached step over the same
    mini-batches and random stream (1e-4 of each parameter's largest gradient); another seed (other dropout masks)
    gives another gradient, so dropout is live."""
    reference = _encoder_gradients(model_kind, cached=False, seed=7)
    cached = _encoder_gradients(model_kind, cached=True, seed=7)
    other_masks = _encoder_gradients(model_kind, cached=False, seed=8)
    assert set(cached) == set(reference)
    for name, gradient in reference.items():
        largest = gradient.abs().max().item()
        assert (cached[name] - gradient).abs().max().item() <= 1e-4 * largest + 1e-7, name
    embedding = "embeddings.word_embeddings.weight"
    assert not torch.allclose(other_masks[embedding], reference[embedding], rtol=1e-3, atol=1e-6)


def test_fsdp2_on_two_cpu_processes_equals_one_process(tmp_path):
    """FSDP2 (``fully_shard``) over gloo, 2 CPU ranks: accelerate's FSDP2 wrapping policy under ``fsdp.yaml`` picks
    each encoder layer (``BertLayer``, and ``MoEBertLayer`` in the MoE encoder) and the embeddings; every parameter
    is a DTensor sharded on dim 0 over the 2-rank mesh. accelerate attaches FSDP only to GPU-like devices, so the
    Trainer's own FSDP path cannot run on CPU: the model and objective train in a minimal AdamW loop instead.

    After 3 steps the per-step losses equal one process on the same global batches (1e-6 relative) and so does
    every full parameter, to 5e-6 = 0.5% of one step at lr 1e-3 (a wrong reduction or shard moves a parameter by the
    order of lr): Adam divides each gradient by its root mean square, so where a gradient is small its rounding,
    which differs with the CPU's kernels, reaches the parameter amplified (1.3e-6 on an AVX-512 Xeon). Attention
    key biases 5e-5: their true gradient is 0, softmax being invariant to them, and Adam's normalised step acts on
    the rounding noise left in their place.
    """
    from tests.scale_out_common import fsdp_steps

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             str(REPO / "tests" / "fsdp2_worker.py"), str(tmp_path / "fsdp.pt")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    sharded = torch.load(tmp_path / "fsdp.pt")
    for kind, layer in (("dense", "BertLayer"), ("moe", "MoEBertLayer")):
        run, reference = sharded[kind], fsdp_steps(kind, shard=False)
        assert run["wrapped"] == [layer, layer, "BertEmbeddings"]
        assert set(run["placements"].values()) == {("(Shard(dim=0),)", 2)}
        assert run["losses"] == pytest.approx(reference["losses"], rel=1e-6)
        for name, parameter in reference["parameters"].items():
            tolerance = 5e-5 if name.endswith("key.bias") else 5e-6
            assert (run["parameters"][name] - parameter).abs().max().item() < tolerance, (kind, name)
        assert run["largest_change"] > 1e-3  # the parameters compared did train (3 steps at lr 1e-3)


def test_every_process_draws_from_the_same_source_at_each_step(tmp_path):
    """Two sources, 2 processes: at every step both processes' batches (accelerate hands one to each) come from one
    source and share no text, so negatives gathered across processes never compare an STS pair with an NLI row."""
    result = accelerate_launch(str(REPO / "tests" / "source_steps_worker.py"), str(tmp_path / "steps.pt"))
    assert result.returncode == 0, result.stderr[-3000:]
    record = torch.load(tmp_path / "steps.pt")
    assert record["world_size"] == 2
    source_of = record["source_of_anchor"]
    seen = set()
    for step in record["steps"]:
        step_sources = {source_of[anchor] for batch in step for anchor in batch["anchors"]}
        assert len(step_sources) == 1, step_sources
        seen |= step_sources
        first, second = ({text for text in batch["texts"] if text != 0} for batch in step)
        assert not first & second
    # 60 rows per source, 2 processes x 4 rows a step: 7 steps of each source, the 4 rows left over dropped
    assert record["rows_per_source"] == [60, 60] and record["steps_per_source"] == [7, 7]
    assert seen == {0, 1} and len(record["steps"]) == 14
