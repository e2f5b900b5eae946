# The commands the README names. Run them as root (sudo make ...): the testbed builds network
# namespaces and Open vSwitch bridges. `make unit` and `make lint` need no root once set up.
PY := .venv/bin/python
DEFAULT_TOPOLOGY := topologies/talk.yaml
PROGRAMS := build/podserver build/httpprobe
C_SOURCES := $(wildcard workloads/*.c workloads/*.h) workloads/build.sh

.PHONY: setup test unit lint demo check clean programs

setup:
	@sh tools/setup.sh

# The whole suite: lint, unit tests (pure) and integration tests (real clusters), the two
# side by side (tools/test.sh).
test: setup
	$(MAKE) --no-print-directory lint
	sh tools/test.sh $(PY)

# The pure parts only; no root needed (run `sudo make setup` once first).
unit: $(PY)
	$(PY) -m pytest tests/unit -q

# ruff and mypy with the per-file ratchet in pyproject.toml, and the house rules (layers,
# cycles, sizes, module paths in strings).
lint: $(PY)
	$(PY) -m ruff check --no-cache .
	$(PY) -m mypy
	$(PY) tools/architecture.py

$(PY):
	@echo "no .venv yet — run: sudo make setup" >&2; exit 3

# The C programs rebuild when any of their sources or headers change.
programs: $(PROGRAMS)
$(PROGRAMS) &: $(C_SOURCES)
	sh workloads/build.sh

# The eBPF kube-proxy's programs (clang -target bpf, CO-RE against the kernel's BTF).
programs: build/bpf/lb.o
build/bpf/lb.o: bpf/lb.c bpf/build.sh
	sh bpf/build.sh

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
