# The user interface: every target is a thin call into `python -m harness`.
# A .venv is created on first use; PYTHON=python3 (or any interpreter) uses that one instead.
EXP ?= plenoxels_tv
ARGS ?=
CLUSTER ?=
RUNS ?= runs
VENV ?= .venv
PYTHON ?= $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Only build the venv when PYTHON is the venv's interpreter.
ifeq ($(PYTHON),$(VENV)/bin/python)
DEPS := $(STAMP)
else
DEPS :=
endif

# LPIPS backbone weights offline: torchvision's cache is used when present; otherwise this folder
# (the team's shared copy, when it sits beside the checkout). See docs/evaluation.md.
export HARNESS_LPIPS_WEIGHTS ?= $(abspath $(wildcard ../shared/data/lpips_weights))

CLUSTER_ARG := $(if $(CLUSTER),--cluster $(CLUSTER),)

.PHONY: help sweep report status doctor cancel inspect profile tensorboard test lint bench data clean install

help:
	@echo "make sweep EXP=name [CLUSTER=local|debug|slurm] [ARGS=\"--bind 'X.y=1'\"]  run an experiment"
	@echo "make report EXP=name[,other]   HTML report of the records in $(RUNS)/"
	@echo "make status EXP=name           trials by state (with SLURM job state, node, failed trials' log tails)"
	@echo "make doctor EXP=name|SCENE     data checks on the scenes an experiment uses (or a scene folder)"
	@echo "make profile EXP=name [BATCH_SIZES=1024,4096,16384]  peak memory and step time per batch size (first trial)"
	@echo "make cancel EXP=name           cancel the experiment's SLURM jobs, mark unfinished trials cancelled"
	@echo "make inspect TRIAL=EXP/ID RAY=\"VIEW:X,Y ...\" [ARGS=\"--worst 5\"]  a trial's samples along pixels' rays (CSV, plot)"
	@echo "make tensorboard EXP=name[,other]  TensorBoard over the trials, live (ARGS='--port N'; prints the URL)"
	@echo "make test                      the test suite"
	@echo "make lint                      ruff (all code) and mypy (harness/, reports/); rules in pyproject.toml"
	@echo "make bench                     pytest-benchmark suite -> bench.json"
	@echo "make data                      link the shared datasets (lego_200/400/800, fern, LPIPS weights) into data/"
	@echo "make data DOWNLOAD=\"nerf_llff_data lpips_vgg\"  download public datasets (checksummed, resumable); ARGS=--list shows them"
	@echo "experiments: $$(ls experiments/*.gin | xargs -n1 basename | sed 's/.gin$$//' | tr '\n' ' ')"

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip
	$(VENV)/bin/pip install -e '.[test]'
	touch $(STAMP)

install: $(DEPS)

sweep: $(DEPS)
	$(PYTHON) -m harness sweep $(EXP) --runs-dir $(RUNS) $(CLUSTER_ARG) $(ARGS)

report: $(DEPS)
	$(PYTHON) -m harness report $(EXP) --runs-dir $(RUNS) $(ARGS)

status: $(DEPS)
	$(PYTHON) -m harness status $(EXP) --runs-dir $(RUNS) $(ARGS)

doctor: $(DEPS)
	$(PYTHON) -m harness doctor $(EXP) $(ARGS)

profile: $(DEPS)
	$(PYTHON) -m harness profile $(EXP) --runs-dir $(RUNS) $(if $(BATCH_SIZES),--batch-sizes $(BATCH_SIZES),) $(ARGS)

inspect: $(DEPS)
	$(PYTHON) -m harness inspect $(TRIAL) --runs-dir $(RUNS) $(foreach r,$(RAY),--ray $(r)) $(ARGS)

cancel: $(DEPS)
	$(PYTHON) -m harness cancel $(EXP) --runs-dir $(RUNS) $(ARGS)

tensorboard: $(DEPS)
	$(PYTHON) -m harness tensorboard $(EXP) --runs-dir $(RUNS) $(ARGS)

test: $(DEPS)
	$(PYTHON) -m pytest -q $(ARGS)

lint: $(DEPS)
	$(PYTHON) -m ruff check .
	$(PYTHON) -m mypy

bench: $(DEPS)
	$(PYTHON) -m pytest tests/bench -p no:cacheprovider --override-ini addopts= -rs --benchmark-json=bench.json $(ARGS)

# Offline default: link the shared copies. DOWNLOAD="name ..." fetches entries of harness/core/data/datasets.toml.
data: $(DEPS)
	$(PYTHON) -m harness data $(if $(DOWNLOAD),--download $(DOWNLOAD),) $(ARGS)

clean:
	rm -rf $(RUNS) .pytest_cache bench.json
