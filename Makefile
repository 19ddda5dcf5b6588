# make smoke   set up, then fine-tune all-MiniLM-L6-v2 on real SNLI pairs offline and print the STS table
# make test    set up, then run the test suite
PYTHON ?= python3
VENV ?= .venv
# torch is installed first and only if the venv lacks it. The default takes the CPU wheel (torch==2.13.0);
# for a GPU build pass your own, e.g. make setup TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu126"
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.ese-installed

.PHONY: setup smoke test lint clean gpu-wheels

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install $(TORCH_SPEC)
	$(BIN)/python -m pip install -e ".[dev]"
	# DeepSpeed builds against the installed torch (no isolated build env, which would fetch another torch); its
	# other ops compile on first use. The tests run ZeRO-2 on CPU processes with it.
	$(BIN)/python -c "import deepspeed" 2>/dev/null || DS_BUILD_OPS=0 $(BIN)/python -m pip install \
		--no-build-isolation "deepspeed>=0.19.8"
	# DeepSpeed's CPU collectives op is compiled once here rather than at the first DeepSpeed run (about a minute); a
	# build lock left by a killed run is cleared first, and the build is given 15 minutes at most.
	timeout 900 $(BIN)/python -m ese_trainer.config.deepspeed_op \
		|| echo "DeepSpeed's CPU comm op did not build (no C++ compiler?): DeepSpeed runs on CPU need it; nothing else does"
	$(BIN)/python -m ese_trainer.hub_models
	touch $(STAMP)

setup: $(STAMP)

smoke: setup
	HF_HUB_OFFLINE=1 $(BIN)/accelerate launch --config_file recipes/accelerate_configs/single_process.yaml \
		recipes/train_nli.py --config configs/smoke.yaml

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .

# make gpu-wheels   what bench/gpu_throughput.sh needs on a GPU machine that has torch but no network (Python 3.12):
# the rest of the stack as wheels at the versions installed here, and the tokenizer as a folder; carry build/gpu_stack
GPU_STACK := build/gpu_stack
GPU_PACKAGES := transformers sentence-transformers huggingface_hub tokenizers kernels tomlkit httpx2 httpcore2 truststore click
gpu-wheels: setup
	rm -rf $(GPU_STACK) && mkdir -p $(GPU_STACK)/wheels
	$(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d $(GPU_STACK)/wheels $$($(BIN)/python -c "from importlib.metadata import version; \
		print(' '.join(f'{name}=={version(name)}' for name in '$(GPU_PACKAGES)'.split()))")
	HF_HUB_OFFLINE=1 $(BIN)/python -c "from transformers import AutoTokenizer; \
		from ese_trainer.hub_models import resolve_model_path as path; \
		AutoTokenizer.from_pretrained(path('sentence-transformers/all-MiniLM-L6-v2')).save_pretrained('$(GPU_STACK)/tokenizer')"
	du -sh $(GPU_STACK)

clean:
	rm -rf $(VENV) outputs
