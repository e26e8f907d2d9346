# diffdecon: every table, figure and the manuscript from one Makefile.
#
#   make test     the test suite (unit tests + notebooks under the smoke profile, nbval)
#   make paper    execute every notebook under PROFILE (default quick) and build paper/main.pdf
#   make data     download the five HSC targets and verify their checksums
#   make lab      JupyterLab with the project's kernel
#   make bench    speed, memory and calibration benchmarks -> results/
#   make train    (re)train the PROFILE checkpoint (resumes an interrupted run)
#
# The first target run on a fresh clone builds the virtual environment (.venv).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PROFILE ?= quick
# Optional extra package index for torch, e.g. TORCH_INDEX=https://download.pytorch.org/whl/cpu
# for the small CPU wheel on a machine without a GPU.
TORCH_INDEX ?=
# Real data: $DIFFDECON_DATA if set; in a development checkout beside ../shared, that
# folder; otherwise data/external, where `make data` downloads.
DIFFDECON_DATA ?= $(if $(wildcard ../shared/data/hsc_pdr3_cosmos),$(abspath ../shared/data),$(CURDIR)/data/external)
export DIFFDECON_DATA
export PYTHONHASHSEED := 0

SRC := $(shell find src/diffdecon -name '*.py')
NOTEBOOK_SOURCES := $(sort $(wildcard notebooks/[0-9][0-9]_*.py))
EXECUTED := $(patsubst notebooks/%.py,build/notebooks/$(PROFILE)/%.ipynb,$(NOTEBOOK_SOURCES))

.PHONY: all venv test test-fast paper notebooks store-notebooks data lab bench train sync clean help
all: test

help:
	@sed -n '2,12p' Makefile

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade -q pip
	$(PY) -m pip install -q $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) -e '.[notebooks,test]'
	$(PY) -m ipykernel install --sys-prefix --name diffdecon --display-name "Python (diffdecon)" >/dev/null
	@touch $@

venv: $(VENV)/.installed

# Unit tests, then every notebook under the smoke profile (nbval-lax: outputs of cells
# marked NBVAL_CHECK_OUTPUT are compared; the committed outputs are quick-profile ones).
test: venv
	DIFFDECON_PROFILE=smoke DIFFDECON_PAPER=$(CURDIR)/build/test-paper \
	  $(VENV)/bin/pytest tests notebooks --nbval-lax -p no:cacheprovider

test-fast: venv
	$(VENV)/bin/pytest tests -x -q

sync: venv
	$(PY) -m diffdecon.pipeline sync

build/notebooks/$(PROFILE)/%.ipynb: notebooks/%.py $(SRC) | venv
	$(PY) -m diffdecon.pipeline run $< --profile $(PROFILE)

notebooks: $(EXECUTED)

# Store the executed quick-profile outputs in the committed .ipynb files.
store-notebooks: notebooks
	@for f in $(EXECUTED); do cp $$f notebooks/$$(basename $$f); echo "stored $$f"; done

paper: notebooks
	@if command -v latexmk >/dev/null 2>&1 && command -v pdflatex >/dev/null 2>&1; then \
	  cd paper && latexmk -pdf -interaction=nonstopmode -halt-on-error main.tex >/dev/null && echo "built paper/main.pdf"; \
	else \
	  echo "No TeX engine found (latexmk + pdflatex): figures and tables are regenerated in paper/,"; \
	  echo "but paper/main.pdf is not built. On Debian/Ubuntu: sudo apt-get install latexmk texlive-latex-recommended texlive-latex-extra texlive-fonts-recommended"; \
	fi

data: venv
	$(PY) scripts/download_data.py --dest $(CURDIR)/data/external

lab: venv
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

bench: venv
	@mkdir -p results
	$(PY) bench/bench_training.py --batch-sizes 16
	# azula's MMPS is compared on the same denoiser and problem: a benchmark-only extra, not a
	# package dependency; --no-deps (its core needs torch and einops, no torchvision)
	-$(PY) -m pip install -q --no-deps azula einops
	# Sampler settings from validation.sampler_settings(profile). DPS at zeta = 1e-3: the
	# published zeta = 1 diverges in flux units on the quick model (results/bench_sampling_zeta1.json).
	$(PY) bench/bench_sampling.py --zeta 1e-3
	# Calibration where the answer is known: 100 prior-drawn and 16 held-out truths per magnitude
	# (i = 18, 20, 22) -> results/calibration.json; the same without the chain's lookahead
	# (diffdecon.lookahead, the default since 2026-12-04). The runs below were measured without it
	# (--lookahead off), as their files record.
	$(PY) bench/bench_calibration.py --profile $(PROFILE) --truths 300 --heldout 48
	$(PY) bench/bench_calibration.py --profile $(PROFILE) --truths 300 --heldout 48 --lookahead off \
	  --output results/calibration_without_lookahead.json
	# The sampler where its prior is exact (a Gaussian mixture about 1024 training galaxies): the
	# profile's sampler (steps from draws of p(x0 | x_t, y), the last too) on 50 exact draws per
	# magnitude, and steps from the mean (one linearisation in the last step) on 20 per magnitude
	$(PY) bench/bench_calibration.py --profile $(PROFILE) --lookahead off --prior mixture --truths 150 --output results/calibration_mixture_draw_last.json
	$(PY) bench/bench_calibration.py --profile $(PROFILE) --lookahead off --prior mixture --truths 60 --x0-draw off --last-draw off \
		--last-newton 1 --output results/calibration_mixture_mean.json
	# What the diagonal covariance costs where the prior is exact: the profile's sampler with the
	# mixture's own Cov[x0 | x_t] (--covariance exact) against it on the same exact draws
	for spec in "18 40" "20 60" "22 40"; do set -- $$spec; \
	  $(PY) bench/bench_calibration.py --profile $(PROFILE) --lookahead off --prior mixture --mags $$1 --truths $$2 \
	    --output results/calibration_mixture_i$$1.json || exit 1; \
	  $(PY) bench/bench_calibration.py --profile $(PROFILE) --lookahead off --prior mixture --mags $$1 --truths $$2 --covariance exact \
	    --output results/calibration_mixture_exact_i$$1.json || exit 1; done
	# A low-rank covariance from the denoiser's Jacobian (--covariance jacobian) at i = 22: on the
	# mixture's same 40 exact draws, and on the network's 30 chain draws against its default there
	$(PY) bench/bench_calibration.py --profile $(PROFILE) --lookahead off --prior mixture --mags 22 --truths 40 --covariance jacobian \
		--output results/calibration_mixture_jacobian_i22.json
	$(PY) bench/bench_calibration.py --profile $(PROFILE) --lookahead off --prior mixture --mags 22 --truths 40 --covariance jacobian \
		--jacobian-min-t 0 --output results/calibration_mixture_jacobian_t0_i22.json
	$(PY) bench/bench_calibration.py --profile $(PROFILE) --lookahead off --mags 22 --truths 30 --heldout 0 \
		--output results/calibration_i22.json
	$(PY) bench/bench_calibration.py --profile $(PROFILE) --lookahead off --mags 22 --truths 30 --heldout 0 --covariance jacobian \
		--output results/calibration_jacobian_i22.json
	$(PY) bench/bench_calibration.py --profile $(PROFILE) --lookahead off --mags 22 --truths 30 --heldout 0 --covariance jacobian \
		--jacobian-rank 8 --output results/calibration_jacobian8_i22.json
	# the same two on 80 other chain draws at i = 22 (TARP over 30-50 draws is too noisy to decide)
	$(PY) bench/bench_calibration.py --profile $(PROFILE) --lookahead off --mags 22 --truths 80 --heldout 0 \
		--output results/calibration_i22_80.json
	$(PY) bench/bench_calibration.py --profile $(PROFILE) --lookahead off --mags 22 --truths 80 --heldout 0 --covariance jacobian \
		--jacobian-rank 8 --output results/calibration_jacobian8_i22_80.json
	# Is the prior's chain stationary under its own noising (renoise-denoise cycles)? -> results/prior_drift.json
	$(PY) bench/bench_prior_drift.py --profile $(PROFILE)
	# The denoiser's mean error alone along the committed training run (its EMA snapshots and the
	# final weights, on the same held-out galaxies and noise) -> results/prior_mean_error_*.json
	for f in models/$(PROFILE)/snapshots/ema_step*.pt; do \
	  $(PY) bench/bench_prior_drift.py --profile $(PROFILE) --cycles 0 --starts heldout --checkpoint $$f \
	    --output results/prior_mean_error_$$(basename $$f .pt).json || exit 1; done
	$(PY) bench/bench_prior_drift.py --profile $(PROFILE) --cycles 0 --starts heldout --output results/prior_mean_error_final.json
	@if $(PY) -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'; then \
	  $(PY) bench/bench_training.py --device cuda --profiles smoke quick --threads 4 --batch-sizes 64 128 256 --steps 20; \
	  $(PY) bench/bench_paper_sampler.py --device cuda --compile; \
	else echo "no CUDA device: GPU benchmarks skipped (results/*_gpu.json keep their last GPU run; scripts/gpu_run.sh is the one-call GPU run)"; fi

train: venv
	$(PY) scripts/train.py --profile $(PROFILE) --resume

clean:
	rm -rf build paper/*.aux paper/*.log paper/*.fls paper/*.fdb_latexmk paper/*.out
