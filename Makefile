# Two commands do all the set-up on a fresh machine:
#   make demo   - create .venv, install the CPU torch wheel and onebert (core dependencies only), run `onebert demo`
#   make test   - the same set-up plus the test extras (onebert[test]), then the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch first, pinned: an unpinned `torch` requirement would pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
# One stamp per set-up: the demo needs only the core; the tests add transformers, onnx, openvino, ... (GBs).
CORE_STAMP := $(VENV)/.onebert-core
TEST_STAMP := $(VENV)/.onebert-test

.PHONY: demo test setup setup-demo setup-test clean

setup: setup-test
setup-demo: $(CORE_STAMP)
setup-test: $(TEST_STAMP)

$(CORE_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e .
	@# tcmalloc makes PyTorch CPU training 1.2-2x faster; the onebert launcher preloads it when present.
	-@ldconfig -p 2>/dev/null | grep -q libtcmalloc_minimal || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	   (apt-get install -y -qq libtcmalloc-minimal4 >/dev/null 2>&1 || \
	    (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq libtcmalloc-minimal4 >/dev/null 2>&1)) || \
	   echo "note: libtcmalloc-minimal4 not installed; onebert runs with the system allocator"; }
	touch $(CORE_STAMP)

$(TEST_STAMP): $(CORE_STAMP) pyproject.toml
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(TEST_STAMP)

demo: $(CORE_STAMP)
	$(BIN)/onebert demo

test: $(TEST_STAMP)
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) demo_run .pytest_cache
