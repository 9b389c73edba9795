# cofre: `make tiny` sets up and runs the main job offline on a CPU; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# A GPU machine gets pip's default torch; a CPU-only one the CPU build (the newest torch is never required).
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch>=2.4" || echo "torch==2.13.0")
ACCELERATE := $(BIN)/accelerate launch

.PHONY: setup tiny test bench-train table7 table7-tiny clean-runs

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install "$(TORCH_SPEC)"
	$(BIN)/pip install -e ".[dev]"
	touch $@

setup: $(VENV)/.installed  ## create .venv and install cofre with its offline assets

tiny: setup  ## the main job, offline on a CPU: train the tiny FP-MDLM
	$(BIN)/cofre train recipes/tiny-fp-mdlm.yaml

test: setup  ## the whole test suite (slow end-to-end tests included)
	$(BIN)/python -m pytest

bench-train: setup  ## step time and peak memory, MDLM vs FP-MDLM at the paper's width (Table 7 ratios)
	$(BIN)/python benchmarks/train_step.py recipes/owt-mdlm.yaml recipes/owt-fp-mdlm.yaml

table7-tiny: setup  ## Table 7 in miniature: train both tiny models, count parameters, compare step cost
	$(BIN)/cofre train recipes/tiny-mdlm.yaml
	$(BIN)/cofre train recipes/tiny-fp-mdlm.yaml
	$(BIN)/cofre inspect runs/tiny-mdlm
	$(BIN)/cofre inspect runs/tiny-fp-mdlm
	$(BIN)/python benchmarks/train_step.py recipes/tiny-mdlm.yaml recipes/tiny-fp-mdlm.yaml

table7: setup  ## Table 7 at full scale (GPUs; set NPROC): 1M steps of MDLM and FP-MDLM on OpenWebText
	$(ACCELERATE) --multi_gpu --num_processes $(or $(NPROC),8) -m cofre train recipes/owt-mdlm.yaml
	$(ACCELERATE) --multi_gpu --num_processes $(or $(NPROC),8) -m cofre train recipes/owt-fp-mdlm.yaml
	$(BIN)/cofre inspect runs/owt-mdlm
	$(BIN)/cofre inspect runs/owt-fp-mdlm
	$(BIN)/python benchmarks/train_step.py recipes/owt-mdlm.yaml recipes/owt-fp-mdlm.yaml

clean-runs:  ## delete runs/ (all training output)
	rm -rf runs
