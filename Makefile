# The two commands of the README. Each sets up .venv first when it is missing or out of date.
.PHONY: setup demo test lint

setup:
	@bash scripts/setup.sh

demo: setup
	@bash scripts/demo.sh

test: setup
	.venv/bin/python -m pytest -q

lint: setup
	.venv/bin/ruff check hf_reflow tests benchmarks space
