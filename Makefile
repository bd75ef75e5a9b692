# divcfg: two commands do everything on a fresh machine.
#   make demo   — set up, then run the whole pipeline on the music21 testbed and write the report
#   make test   — set up, then run the test suite
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: setup system-deps demo test bench clean

$(STAMP): pyproject.toml requirements.lock
	@command -v $(PY) >/dev/null 2>&1 || { echo "error: $(PY) not found: install Python 3.11 or run make PY=python3"; exit 2; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first: the CPU wheel of 2.13.0; anything later that depends on torch finds it installed
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c requirements.lock -e '.[dev]'
	touch $(STAMP)

# Debian packages for audio (FluidSynth + a General MIDI soundfont) and browser tests (Chromium).
# Installed only when missing and when running as root; without them audio/browser checks say so.
system-deps:
	@if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	  missing=""; \
	  [ -f /usr/share/sounds/sf2/TimGM6mb.sf2 ] || missing="$$missing timgm6mb-soundfont"; \
	  command -v fluidsynth >/dev/null 2>&1 || missing="$$missing fluidsynth"; \
	  command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	  command -v chromedriver >/dev/null 2>&1 || missing="$$missing chromium-driver"; \
	  if [ -n "$$missing" ]; then \
	    echo "installing Debian packages:$$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
	      || echo "warning: could not install$$missing (the audio and browser tests will fail)"; \
	  fi; \
	else echo "note: not root; skipping Debian packages (fluidsynth timgm6mb-soundfont chromium chromium-driver)"; fi

setup: $(STAMP) system-deps

demo: setup
	$(BIN)/divcfg demo

test: setup
	$(BIN)/python -m pytest -x -q

bench: setup
	$(BIN)/pip install --quiet -c requirements.lock -e '.[bench]'
	$(BIN)/python benchmarks/inference.py
	$(BIN)/python benchmarks/finetune.py

clean:
	rm -rf $(VENV) runs data .pytest_cache
