# Two commands for a fresh clone: `make demo` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-fast lint demo clean

# The demo: a synthetic VOC-layout dataset -> shards -> FOrec on the CPU -> evaluation.
DEMO_RAW := data/synth_voc_raw
DEMO_SPLITS := data/synth_voc_splits
DEMO_DATA := data/synth_voc
DEMO_RUN := runs/synth_demo
DEMO_SYNTH_ARGS := --num-train 400 --num-val 60 --size 128x160 --seed 0
DEMO_LABELED := 100

# The stamp makes a second `make install` quick; it is redone when pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first: deepspeed's build reads the installed torch.
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q --no-build-isolation -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Two workers (pytest-xdist), a test file each at a time: --dist loadfile keeps a file's
# module-scoped fixtures (trained runs, exported weights) built once; the few session-scoped ones
# (small shard sets, one 6-step run) are built once per worker. Much of the suite waits on process
# start-up (launchers, DeepSpeed's import, gloo), which one worker leaves a core idle for.
# TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
XDIST := -n $(TEST_WORKERS) --dist loadfile

test: install
	# --durations: the slowest tests in every CI log (the suite aims at 15 minutes on a 2-core CPU)
	$(BIN)/python -m pytest -q $(XDIST) --durations=25 tests

# The inner loop: everything but the multi-process and end-to-end runs (marked slow in tests/conftest.py).
test-fast: install
	$(BIN)/python -m pytest -q $(XDIST) -m "not slow" tests

lint: install
	$(BIN)/ruff check .

demo: install
	# --force: these are the demo's own folders (a tree synthesised before dataprep marked its outputs has no mark)
	$(BIN)/dataprep synth --layout voc --out $(DEMO_RAW) $(DEMO_SYNTH_ARGS) --force
	$(BIN)/dataprep splits --root $(DEMO_RAW) --layout voc --labeled $(DEMO_LABELED) --seed 0 --out $(DEMO_SPLITS) --force
	$(BIN)/dataprep voc --root $(DEMO_RAW) --split-dir $(DEMO_SPLITS) --out $(DEMO_DATA)
	rm -rf $(DEMO_RUN)
	time $(BIN)/python fastforec/train.py --config configs/cpu/synth_demo.json --run-dir $(DEMO_RUN)
	$(BIN)/fastforec eval --config configs/cpu/synth_demo.json --checkpoint $(DEMO_RUN) --json $(DEMO_RUN)/eval.json

clean:
	rm -rf $(VENV) data runs
