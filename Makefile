# One entry point for humans and CI. `make demo` runs the main job; `make test` runs everything CI runs.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch + torchvision (open_clip needs it) come pinned, from this machine's disk where it has them;
# an unpinned torch would pull the newest CUDA build.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
PROMPT ?= a yellow star above a green square, night sky

.PHONY: install demo test lint typecheck unit slow bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[dev,nudenet]"
	touch $@

install: $(BIN)/.installed  ## create .venv with everything (idempotent)

# No CLIP weights can be downloaded offline, and a configured stage that cannot load blocks every
# image (fail closed); so the offline demo runs the stages whose weights ship with their packages.
DEMO_STAGES ?= prompt,integrity,faces

demo: install  ## the main job, offline on the embedded default model
	IMAGINEBOT_SAFETY_STAGES=$(DEMO_STAGES) $(BIN)/imaginebot generate "$(PROMPT)" --count 4 --seed 7 --out out

lint: install
	$(BIN)/ruff format --check bot safety models tests bench
	$(BIN)/ruff check bot safety models tests bench

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest -q

test: lint typecheck unit  ## everything CI runs

slow: install
	$(BIN)/pytest -q -m slow

bench: install
	$(BIN)/python bench/bench_scheduler.py
	$(BIN)/python bench/bench_demo.py
	$(BIN)/python bench/bench_safety.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache out
