# The commands the README names. Run them as root (sudo make ...): the testbed builds network
# namespaces and Open vSwitch bridges.
PY := .venv/bin/python
DEFAULT_TOPOLOGY := topologies/talk.yaml

.PHONY: setup test unit demo check clean

setup:
	@sh tools/setup.sh

# The whole suite: unit tests (pure) and integration tests (real clusters).
test: setup
	$(PY) -m pytest tests -q -rs

unit: setup
	$(PY) -m pytest tests/unit -q

# The main job on the shipped default topology: classic vs container-native, measured and
# plotted (about 3 minutes on 2 cores); prints where the report is.
demo: setup
	.venv/bin/cnlb run experiments/compare.yaml --topology $(DEFAULT_TOPOLOGY)

# Build the default cluster in both modes and print what reaches what.
check: setup
	.venv/bin/cnlb up $(DEFAULT_TOPOLOGY) --check
	.venv/bin/cnlb up $(DEFAULT_TOPOLOGY) --mode container-native --check

# Remove whatever a crashed run left behind (only what the testbed made).
clean:
	@if [ -x .venv/bin/cnlb ]; then .venv/bin/cnlb clean; fi
