"""The speed options of the ``model`` section: attention dropout (0 opens PyTorch's fused flash SDPA kernel on CPU) and
compiled transformer layers, on the real all-MiniLM-L6-v2 and real SNLI rows."""

import copy

import pytest
import torch
from torch._dynamo.utils import counters
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import AutoConfig, TrainingArguments

from ese_trainer.config.parsing import ConfigError, parse_config
from ese_trainer.data.collator import RowCollator
from ese_trainer.ese.arguments import ESEArguments
from ese_trainer.losses.arguments import LossArguments
from ese_trainer.modeling.arguments import ModelArguments, MoEArguments
from ese_trainer.modeling.encoding import SentenceEncoder
from ese_trainer.modeling.fused_qkv import fuse_qkv
from ese_trainer.modeling.loading import compile_layers, load_tokenizer_and_encoder
from ese_trainer.training.build import build_objective
from ese_trainer.training.trainer import ESETrainer
from ese_trainer.training.training_model import TrainingModel

from .conftest import build_tiny_bert, snli_rows


@pytest.fixture(scope="module")
def rows():
    return snli_rows(16, seed=5)


def test_the_options_parse_from_yaml_and_bad_values_are_named(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("output_dir: x\nattention_dropout: 0\ncompile_layers: true\n")
    model, _ = parse_config(["--config", str(path)], (ModelArguments, TrainingArguments))
    assert model.attention_dropout == 0.0 and model.compile_layers
    path.write_text("output_dir: x\nattention_dropout: 1.5\n")
    with pytest.raises((ConfigError, ValueError), match=r"attention_dropout must be in \[0, 1\), got 1.5"):
        parse_config(["--config", str(path)], (ModelArguments, TrainingArguments))


def test_attention_dropout_zero_reaches_the_model_and_opens_the_flash_kernel(rows):
    """PyTorch's CPU SDPA refuses its flash kernel with any dropout ("Both fused kernels do not support non-zero
    dropout", sdp_utils_cpp.h): restricted to that kernel, the packed training forward runs at 0 and fails at the
    checkpoint's 0.1."""
    tokenizer, model = load_tokenizer_and_encoder(ModelArguments(attention_dropout=0.0), MoEArguments())
    _, default = load_tokenizer_and_encoder(ModelArguments(), MoEArguments())
    assert model.config.attention_probs_dropout_prob == 0.0 and default.config.attention_probs_dropout_prob == 0.1
    assert {layer.attention.self.dropout.p for layer in model.encoder.layer} == {0.0}
    assert {layer.attention.self.dropout.p for layer in default.encoder.layer} == {0.1}
    batch = RowCollator(tokenizer, 128)([rows[i] for i in range(6)])
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        SentenceEncoder(model.train(), "mean", packed=True)(batch).embeddings.sum().backward()
        with pytest.raises(RuntimeError, match="No available kernel"):
            SentenceEncoder(default.train(), "mean", packed=True)(batch)
    assert model.encoder.layer[0].attention.self.query.weight.grad is not None


def test_training_runs_without_attention_dropout_and_saves_it(rows, tmp_path):
    tokenizer, model = load_tokenizer_and_encoder(ModelArguments(attention_dropout=0.0), MoEArguments())
    before = model.encoder.layer[0].attention.self.query.weight.detach().clone()
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2, learning_rate=1e-4,
                             logging_steps=1, save_strategy="no", report_to="none", remove_unused_columns=False,
                             use_cpu=True, seed=0, dataloader_pin_memory=False)
    trainer = ESETrainer(SentenceEncoder(model, "mean", packed=True),
                         build_objective(LossArguments(), ESEArguments(), model.config), args=args,
                         train_dataset=rows, data_collator=RowCollator(tokenizer, 128), processing_class=tokenizer)
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert not torch.equal(before, model.encoder.layer[0].attention.self.query.weight)
    model.save_pretrained(tmp_path / "saved")
    assert AutoConfig.from_pretrained(tmp_path / "saved").attention_probs_dropout_prob == 0.0


def test_compiled_layers_give_the_eager_loss_and_gradients_without_recompiling(tokenizer, rows):
    """A tiny BERT's layers (Q, K and V fused, as the recipe loads them) compiled (dynamic shapes): packed batches of
    other token counts and lengths reuse the graphs, the only graph break is the packed attention (kept eager), and
    loss and gradients equal eager's."""
    eager = build_tiny_bert(len(tokenizer))
    fuse_qkv(eager)  # as the recipe loads it
    compiled = copy.deepcopy(eager)
    compile_layers(compiled)
    objective = build_objective(LossArguments(), ESEArguments(), eager.config)
    models = {name: TrainingModel(SentenceEncoder(model, "mean", packed=True), objective).eval()
              for name, model in (("eager", eager), ("compiled", compiled))}
    collate = RowCollator(tokenizer, 128)
    counters.clear()
    for step, start in enumerate((0, 4, 8)):
        inputs = collate([rows[i] for i in range(start, start + 4)])
        losses, gradients = {}, {}
        for name, model in models.items():
            model.zero_grad(set_to_none=True)
            loss = model(**inputs).loss
            loss.backward()
            losses[name] = loss.item()
            gradients[name] = {key: p.grad for key, p in model.named_parameters() if p.grad is not None}
        assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-5, abs=1e-6)
        # fused kernels sum in another order: gaps relative to the largest gradient (the key bias's is rounding noise
        # around 0: softmax ignores a shift shared by every key). The token-type table sums every token's gradient:
        # 1.2e-5 on an AVX-512 Xeon; a wrong gradient is off by the order of the gradient itself.
        largest = max(float(grad.abs().max()) for grad in gradients["eager"].values())
        for key, grad in gradients["eager"].items():
            gap = float((gradients["compiled"][key] - grad).abs().max()) / largest
            assert gap < 5e-5, (key, gap)
        if step == 0:
            graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0 and counters["stats"]["unique_graphs"] == graphs  # no recompiles for new shapes
    reasons = {reason.splitlines()[0] for reason in counters["graph_break"]}
    assert reasons and all("torch.compiler.disable" in reason for reason in reasons), reasons
