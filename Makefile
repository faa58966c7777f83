# prefgen: `make generate` runs the main job, `make test` the tests. Both bootstrap .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

# Flags of `prefgen generate`. With no MODEL, a tiny random demo model is built and used.
MODEL ?=
ADAPTER ?=
DATA ?= examples/spider_en/department_store_alpaca.json
OUT ?= runs/demo.jsonl
LEDGER ?=
NUM_REJECTS ?= 2
SEED ?= 1234
TEMPERATURE ?= 0.7
TOP_P ?= 0.9
MAX_SAMPLES ?= 0
BATCH_SIZE ?= 8
DEVICE ?= cuda
SYSTEM ?=
DEDUP ?= 1
TINY_MODEL := runs/tiny-model
ifeq ($(MODEL),)
MAX_NEW_TOKENS ?= 64
GEN_MODEL := $(TINY_MODEL)
GEN_DEPS := $(TINY_MODEL)/config.json
else
MAX_NEW_TOKENS ?= 512
GEN_MODEL := $(MODEL)
GEN_DEPS :=
endif

.PHONY: generate test status bench venv clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml .ci/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c .ci/constraints.txt -e '.[test]'
	touch $@

$(TINY_MODEL)/config.json: $(STAMP)
	$(BIN)/prefgen tiny-model $(TINY_MODEL)

generate: $(STAMP) $(GEN_DEPS)
	@mkdir -p $(dir $(OUT))
	$(BIN)/prefgen generate --base-model '$(GEN_MODEL)' --adapter-path '$(ADAPTER)' \
	  --sft-data '$(DATA)' --output '$(OUT)' $(if $(LEDGER),--ledger '$(LEDGER)') \
	  --num-rejects $(NUM_REJECTS) --seed $(SEED) --max-new-tokens $(MAX_NEW_TOKENS) \
	  --temperature $(TEMPERATURE) --top-p $(TOP_P) --max-samples $(MAX_SAMPLES) \
	  --batch-size $(BATCH_SIZE) --device $(DEVICE) --system '$(SYSTEM)' \
	  $(if $(filter 1,$(DEDUP)),--dedup-rejects) $(if $(filter exact sql,$(DEDUP)),--dedup-rejects $(DEDUP))

status: $(STAMP)
	$(BIN)/prefgen ledger status $(if $(LEDGER),'$(LEDGER)','$(OUT).ledger.sqlite')

# Benchmark: prefgen vs the old one-generate-per-reject script vs bare batched generate.
# BENCH_ARGS, e.g. "--model /models/x --device cuda --batch-size 64", are passed through.
bench: $(STAMP)
	$(BIN)/python -m prefgen.bench $(BENCH_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
