# The README's two commands: `make demo` (set up, then serve the app on the embedded default) and
# `make test` (set up, then run the whole suite). Both are safe to re-run.
PY := .venv/bin/python
export HF_HUB_OFFLINE := 1
export GRADIO_ANALYTICS_ENABLED := False
export PYTHONPATH := $(CURDIR)

.PHONY: setup setup-test demo test test-fast bench bench-scale reproduce clean-workspace

setup:
	@bash scripts/setup.sh

setup-test:
	@bash scripts/setup.sh --browser

demo: setup
	$(PY) launch.py

test: setup-test
	$(PY) -m pytest -q -p no:cacheprovider

test-fast: setup
	$(PY) -m pytest -q -m "not browser and not integration and not distributed"

bench: setup
	$(PY) -m bench

# A million notes on this machine: import, index, search, maps, the note picker, encoding on 1 and 2 processes
# (about 15 minutes on 2 cores; scratch data under /tmp, removed after). Writes bench/results.json's "scale".
bench-scale: setup
	$(PY) -m bench.scale

# One full epoch of openclipart's 6,047 training pairs at 16 pairs per step (377 steps), the same for every run.
reproduce: setup
	$(PY) -m core reproduce --steps 378

clean-workspace:
	rm -rf data/workspace
