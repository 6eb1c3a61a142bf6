# PSALM ablation pipeline: every target below sets up .venv/ on first use (no separate step).
# `make help` lists the targets and variables; their descriptions are the `## ` comments here.

SHELL := /bin/bash
.DEFAULT_GOAL := help

#? Python interpreter that creates .venv/
PYTHON ?= python3
#? Virtual environment folder
VENV ?= .venv
#? Extra arguments appended to the command (pytest, psalm.train, ablations, ...)
ARGS ?=
#? Run size: smoke | default | paper
PROFILE ?= default
#? Where runs execute: local | slurm | debug
LAUNCHER ?= local
#? Data of the ablation targets: synthetic | video | coco (empty: conf/config.yaml's)
DATA ?=
#? Data each training cell trains on before DATA: synthetic | none (one stage) | auto (synthetic for DATA=video)
PRETRAIN ?= auto
PRETRAIN_DATA = $(if $(filter auto,$(PRETRAIN)),$(if $(filter video,$(DATA)),synthetic),$(filter-out none,$(PRETRAIN)))
#? Model: psalm | cheaf; what a sweep tunes (conf/sweep/<MODEL>.yaml), and, typed on the command line, the only model of train and the studies (else: both models)
MODEL ?= psalm
# MODEL counts for train and the studies only when typed: its default is the sweep's
MODEL_GIVEN = $(if $(filter command line,$(origin MODEL)),$(MODEL))
#? Optuna storage read by optuna-dashboard (a sweep's storage: setting)
OPTUNA_STORAGE ?= sqlite:///optuna.db
#? Port of optuna-dashboard (127.0.0.1 only)
OPTUNA_PORT ?= 8080
#? Study name for report / notebook / ablation-status / ablation-cancel: <ablation>-<profile>, e.g. pyramid-default
STUDY ?=
#? Studies to compare: make compare A=... B=...
A ?=
B ?=
#? MLflow store read by mlflow-ui (a server URL is opened as is)
MLFLOW_TRACKING_URI ?= sqlite:///mlflow.db
#? Port of mlflow-ui (127.0.0.1 only)
MLFLOW_PORT ?= 5000
#? Shell of make completion: bash | zsh
COMPLETION_SHELL ?= bash
#? Index of a CUDA torch build for setup, e.g. https://download.pytorch.org/whl/cu128
TORCH_INDEX ?=

PY := $(VENV)/bin/python
# Installed-state stamp: rebuilt whenever pyproject.toml changes, so edits to deps reinstall.
STAMP := $(VENV)/.installed
# The torch pin lives in pyproject.toml only; TORCH_INDEX installs the same release from there.
TORCH_VERSION := $(shell sed -n 's/^ *"torch==\([^"]*\)".*/\1/p' pyproject.toml)

.PHONY: help setup test test-fast lint format benchmark profile train evaluate \
	ablation-pyramid ablation-conv ablation-support ablations ablation-status ablation-cancel \
	completion sweep sweep-status optuna-dashboard postgres-up postgres-down \
	report notebook compare mlflow-ui slurm-up slurm-down clean distclean

##@ General

help: ## Show this help (targets and variables)
	@awk 'BEGIN { FS = ":.*## " } \
		/^##@ / { printf "\n%s\n", substr($$0, 5) } \
		/^[a-zA-Z0-9_.-]+:.*## / { printf "  %-18s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)
	@printf "\nVariables (make TARGET VAR=value)\n"
	@awk '/^#\? / { doc = substr($$0, 4); next } \
		doc != "" && /^[A-Z_]+ *\?=/ { \
			name = $$1; val = $$0; sub(/^[A-Z_]+ *\?= */, "", val); \
			printf "  %-20s %s (default: %s)\n", name, doc, (val == "" ? "-" : val); \
			next } \
		{ doc = "" }' $(MAKEFILE_LIST)

setup: $(STAMP) ## Create .venv/ and install the project with dev extras (reruns when pyproject.toml changes)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if [ -n "$(TORCH_INDEX)" ]; then \
		echo "Installing torch==$(TORCH_VERSION) from $(TORCH_INDEX)"; \
		$(PY) -m pip install "torch==$(TORCH_VERSION)" --index-url "$(TORCH_INDEX)"; \
	fi
	$(PY) -m pip install -e '.[dev]'
	@touch $@

##@ Development

test: $(STAMP) ## Run the test suite (pytest; extra options via ARGS)
	@$(PY) -m pytest -q $(ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5); treated as a failure." >&2; fi; \
	exit $$rc

# Tests that need a service (SLURM, PostgreSQL, Chromium) or take more than a few seconds (slow,
# soak) are marked (pyproject.toml); test-fast leaves them out, test runs everything.
FAST_TESTS := not slow and not slurm and not browser and not postgres and not soak

test-fast: $(STAMP) ## The tests that need no service and take seconds: no slow / SLURM / browser / PostgreSQL (extra options via ARGS)
	@$(PY) -m pytest -q -m "$(FAST_TESTS)" $(ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-fast: pytest collected no tests (exit 5); treated as a failure." >&2; fi; \
	exit $$rc

lint: $(STAMP) ## Check style: ruff check + ruff format --check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP) ## Apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

completion: $(STAMP) ## Print the tab-completion script of the psalm-* commands (COMPLETION_SHELL=bash|zsh), e.g. make -s completion >> ~/.bash_completion
	@$(PY) -m pipeline.completion $(COMPLETION_SHELL)

##@ Models

benchmark: $(STAMP) ## CHEAF vs PSALM: params, latency, memory, and the peer-comparable CPU setting (NCHW / channels-last, 1 and 2 threads; CPU buffers on huge pages, ARGS=--cpu-pages=system for without); writes reports/benchmark.json
	$(PY) -m psalm.benchmark $(ARGS)

profile: $(STAMP) ## Time each part of a training step and a test evaluation (PSALM, CHEAF); writes reports/profile.{md,json}; run overrides via ARGS
	$(PY) -m pipeline.profile --bf16 $(ARGS)

train: $(STAMP) ## One training run recorded in MLflow, e.g. ARGS="model=psalm profile=smoke seed=0"
	$(PY) -m psalm.train $(if $(MODEL_GIVEN),$(call quote,model=$(MODEL))) $(ARGS)

evaluate: $(STAMP) ## Evaluate a trained run (COCO AP), overrides via ARGS
	$(PY) -m psalm.evaluate $(ARGS)

##@ Studies

# DATA other than synthetic makes another study, <study>-<profile>-<DATA> (ablations/study.py);
# DATA=video's is judged on ST-IoU, the drone-video metric (the study setting metric=);
# and trained in two stages, as the source project trains: each cell on the glyphs first, then on
# the videos from those weights (<study>-<profile>-video-from-synthetic; PRETRAIN=none: one stage)
ablation-pyramid ablation-conv ablation-support ablations: override ARGS += $(if $(MODEL_GIVEN),$(call quote,models=[$(MODEL)])) $(if $(DATA),data=$(DATA)) $(if $(filter video,$(DATA)),metric=test/st_iou) $(if $(PRETRAIN_DATA),pretrain=$(PRETRAIN_DATA))
ablation-pyramid: $(STAMP) ## Ablation study: no pyramid (main job); PROFILE, LAUNCHER
	$(PY) -m ablations run pyramid profile=$(PROFILE) launcher=$(LAUNCHER) $(ARGS)

ablation-conv: $(STAMP) ## Ablation study: no conv preprocessing; PROFILE, LAUNCHER
	$(PY) -m ablations run conv profile=$(PROFILE) launcher=$(LAUNCHER) $(ARGS)

ablation-support: $(STAMP) ## Ablation study: no / shuffled support; PROFILE, LAUNCHER
	$(PY) -m ablations run support profile=$(PROFILE) launcher=$(LAUNCHER) $(ARGS)

ablations: $(STAMP) ## All ablation studies, sharing baseline runs; PROFILE, LAUNCHER
	$(PY) -m ablations run all profile=$(PROFILE) launcher=$(LAUNCHER) $(ARGS)

ablation-status: $(STAMP) ## Progress of submitted studies (STUDY= for one)
	$(PY) -m ablations status $(if $(STUDY),$(call quote,$(STUDY))) $(ARGS)

ablation-cancel: $(STAMP) ## Stop a study's unfinished jobs, local or SLURM (STUDY=, required)
	@test -n $(call quote,$(STUDY)) || { echo "make ablation-cancel needs STUDY=<ablation>-<profile>, e.g. STUDY=pyramid-default (make ablation-status lists them)" >&2; exit 2; }
	$(PY) -m ablations cancel $(call quote,$(STUDY)) $(ARGS)

sweep: $(STAMP) ## Optuna sweep of lr, weight decay, warm-up (MODEL=psalm|cheaf); PROFILE, LAUNCHER
	@test -n $(call quote,$(MODEL)) || { echo "make sweep needs MODEL=psalm|cheaf (a sweep of conf/sweep/)" >&2; exit 2; }
	$(PY) -m sweeps run $(call quote,$(MODEL)) profile=$(PROFILE) launcher=$(LAUNCHER) $(ARGS)

sweep-status: $(STAMP) ## Trials of a sweep so far and the best (MODEL, PROFILE)
	@test -n $(call quote,$(MODEL)) || { echo "make sweep-status needs MODEL=psalm|cheaf" >&2; exit 2; }
	$(PY) -m sweeps status $(call quote,$(MODEL)) profile=$(PROFILE) $(ARGS)

optuna-dashboard: $(STAMP) ## optuna-dashboard on 127.0.0.1:OPTUNA_PORT over OPTUNA_STORAGE
	$(VENV)/bin/optuna-dashboard "$(OPTUNA_STORAGE)" --host 127.0.0.1 --port $(OPTUNA_PORT)

##@ Results

# A value as one shell word in single quotes ('it'\''s'): safe for any character but a newline.
quote = '$(subst ','\'',$(1))'

report: $(STAMP) ## Verdict table, plots and dashboard of a study (STUDY=...; without it, lists the studies)
	@if [ -z $(call quote,$(STUDY)) ]; then \
		echo "make report: set STUDY to one of the studies in the store, e.g. make report STUDY=<name>:" >&2; \
		$(PY) -m analysis studies $(ARGS); exit 2; fi
	$(PY) -m analysis report $(call quote,$(STUDY)) $(ARGS)

notebook: $(STAMP) ## Run the ablation notebook (papermill) for STUDY=...; writes it and an HTML copy beside the dashboard
	@if [ -z $(call quote,$(STUDY)) ]; then \
		echo "make notebook: set STUDY to one of the studies in the store, e.g. make notebook STUDY=<name>:" >&2; \
		$(PY) -m analysis studies $(ARGS); exit 2; fi
	$(PY) -m analysis notebook $(call quote,$(STUDY)) $(ARGS)

compare: $(STAMP) ## Compare two studies (A=... B=...); warns when both are the same study
	@if [ -z $(call quote,$(A)) ] || [ -z $(call quote,$(B)) ]; then \
		echo "make compare: set A and B to two studies in the store, e.g. make compare A=<study> B=<other study>:" >&2; \
		$(PY) -m analysis studies $(ARGS); exit 2; fi
	$(PY) -m analysis compare $(call quote,$(A)) $(call quote,$(B)) $(ARGS)

mlflow-ui: $(STAMP) ## MLflow UI on 127.0.0.1:MLFLOW_PORT over MLFLOW_TRACKING_URI
	@case "$(MLFLOW_TRACKING_URI)" in \
	http://*|https://*) echo "MLFLOW_TRACKING_URI is a server: open $(MLFLOW_TRACKING_URI)";; \
	*) exec $(VENV)/bin/mlflow ui --backend-store-uri "$(MLFLOW_TRACKING_URI)" \
		--host 127.0.0.1 --port $(MLFLOW_PORT);; \
	esac

##@ Cluster

slurm-up: $(STAMP) ## Start a single-node SLURM on this machine (root; scripts/slurm-up.sh)
	bash scripts/slurm-up.sh

slurm-down: $(STAMP) ## Stop the local SLURM started by slurm-up
	bash scripts/slurm-down.sh

postgres-up: ## Start a loopback PostgreSQL for sweep storage (scripts/postgres-up.sh); prints its URL
	@bash scripts/postgres-up.sh

postgres-down: ## Stop the PostgreSQL started by postgres-up
	bash scripts/postgres-down.sh

##@ Cleaning

clean: ## Remove caches and build leftovers (keeps .venv/, mlflow.db, outputs/, reports/)
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +
	rm -rf .pytest_cache .ruff_cache build dist *.egg-info

distclean: clean ## Also remove .venv/ (the next target reinstalls it)
	rm -rf $(VENV)
