# Two commands do all the set-up on a fresh machine:
#   make demo   - create .venv, install the CPU torch wheel and onebert, run `onebert demo`
#   make test   - the same set-up, then the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch first, pinned: an unpinned `torch` requirement would pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.onebert-installed

.PHONY: demo test setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]"
	@# tcmalloc makes PyTorch CPU training 1.2-2x faster; the onebert launcher preloads it when present.
	-@ldconfig -p 2>/dev/null | grep -q libtcmalloc_minimal || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	   (apt-get install -y -qq libtcmalloc-minimal4 >/dev/null 2>&1 || \
	    (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq libtcmalloc-minimal4 >/dev/null 2>&1)) || \
	   echo "note: libtcmalloc-minimal4 not installed; onebert runs with the system allocator"; }
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/onebert demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) demo_run .pytest_cache
