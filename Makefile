# The two commands of the README. Each sets up .venv first when it is missing or out of date.
.PHONY: setup demo toy test lint wheel

setup:
	@bash scripts/setup.sh

# The embedded default: multimodal Meta-World -> 1-RF -> 2-RF -> distilled, evaluated by step count.
demo: setup
	HF_HUB_OFFLINE=1 .venv/bin/hf-reflow pipeline --config_path=recipes/metaworld/default.yaml

# The same chain on a 2-D toy problem (seconds per stage).
toy: setup
	@bash scripts/toy_demo.sh

# Two pytest workers, one file each at a time (module fixtures built once); each worker uses one thread.
test: setup
	.venv/bin/python -m pytest -q -n 2 --dist loadfile

lint: setup
	.venv/bin/ruff check hf_reflow tests benchmarks space

# hf-reflow's wheel (recipes and the Space app inside) and its two LeRobot plugin shims, in dist/:
# `pip install --find-links dist hf-reflow[metaworld,space]` then works without a checkout.
wheel: setup
	.venv/bin/python -m pip wheel --no-deps --no-build-isolation -w dist . plugins/lerobot_policy_flow_mlp plugins/lerobot_env_metaworld_detour
