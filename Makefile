# SlimServe developer entry points. `make serve` and `make test` are the two the README promises.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch. On the project's build machines this wheel lies on local disk; elsewhere
# point pip at PyTorch's CPU index (see DEVELOPERS.md) or pre-install the torch you want.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install tools compress serve test test-fast lint format bench clean
MODEL ?= digits-cnn
PROFILE ?= cpu

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e '.[dev,onnx]'
	touch $@

# Tools beyond pip that some tests use: promtool (skips quietly where apt is unavailable) and
# .venv-triton, a real Triton Inference Server through nvidia-pytriton (it pins numpy<2, so it
# lives in its own venv).
tools:
	bash deploy/install-tools.sh
	bash deploy/triton/install-venv.sh

# Compress a built-in model for a profile: variants/<model>-<profile>/ gets the variant,
# report.json and report.png.
compress: install
	$(BIN)/slimserve compress --model $(MODEL) --profile $(PROFILE) --out variants/$(MODEL)-$(PROFILE)

serve: install
	$(BIN)/slimserve serve --model digits-cnn --model minilm

# The suite runs on a pytest-xdist worker per core, a test file to a worker (its module fixtures
# built once); most e2e time is one process waiting on another (a server, a job), so two workers
# keep both cores busy.
PYTEST_WORKERS ?= auto

test: install tools
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile

# The unit tests alone (tiny models, in process; no real servers, no Triton, no pretrained MiniLM
# compression): the quick loop while developing.
test-fast: install
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile -m unit tests/unit

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Benchmarks (results in benchmarks/results/): `make bench`, `make bench BENCH=--quick` for a
# smoke run, `make bench BENCH=--readme` to regenerate the README tables. vs_triton skips itself
# without .venv-triton (deploy/triton/install-venv.sh).
bench: install
	$(BIN)/python -m benchmarks.compression_quality $(filter --readme,$(BENCH))
	$(BIN)/python -m benchmarks.claims $(filter --readme,$(BENCH))
	$(BIN)/python -m benchmarks.vs_torch_pruning $(BENCH)
	$(BIN)/python -m benchmarks.load_test $(BENCH)
	$(BIN)/python -m benchmarks.vs_triton $(BENCH)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
