# Two commands matter: `make demo` (main job on the embedded default) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0
OUT ?= outputs/demo
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

.PHONY: install test demo clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU build of torch first (lies on disk here); later resolution then keeps it.
	$(BIN)/pip install -q "$(TORCH_PIN)"
	$(BIN)/pip install -q -e ".[dev,demo]" "$(TORCH_PIN)"
	touch $@

install: $(BIN)/.installed

test: install
	$(BIN)/python -m pytest -q -x --timeout 600 tests

demo: install
	bash scripts/demo.sh "$(OUT)"

clean:
	rm -rf $(VENV) outputs
