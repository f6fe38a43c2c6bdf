# Three commands matter: `make demo`, `make test` (the whole suite, CI's command) and
# `make test-fast` (everything but the slow tests, while you work). All create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# pytest worker processes (pytest-xdist): CI machines have two cores.
TEST_WORKERS ?= 2
PY     := $(BIN)/python

.PHONY: demo test test-fast lint typecheck pytest install install-demo system-deps protos bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Stamps re-run the install only when pyproject.toml changes.
$(VENV)/.installed-all: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[all]'
	touch $@

$(VENV)/.installed-demo: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[embed,colors,plot]'
	touch $@

install: $(VENV)/.installed-all
install-demo: $(VENV)/.installed-demo

# System packages the tests use, from Debian: Java and Groovy for the QuPath scripts, and the
# libraries QuPath's own jars (../shared/qupath/<version>/, tests/test_qupath_real.py) run on.
# Only missing packages are installed, and only as root; otherwise a warning names them.
SYSTEM_PACKAGES := default-jdk-headless groovy libgoogle-gson-java libguava-java \
  libcommons-math3-java libpicocli-java libslf4j-java libyaml-snake-java libjts-java libij-java \
  libopenjfx-java liblogback-java

system-deps:
	@command -v dpkg-query >/dev/null 2>&1 || exit 0; \
	missing=""; for p in $(SYSTEM_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	[ -z "$$missing" ] && exit 0; \
	if [ "$$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then \
	  echo "warning: missing Debian packages:$$missing (install them as root: apt-get install$$missing); the Groovy and real-QuPath tests that need them will be skipped"; \
	  exit 0; \
	fi; \
	echo "installing from Debian:$$missing"; \
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null 2>&1 || \
	  (apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null 2>&1) || \
	  echo "warning: could not install$$missing; the Groovy and real-QuPath tests that need them will be skipped"

demo: install-demo
	$(BIN)/histosic demo

LINTED := server tests benchmarks scripts

lint: install
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

typecheck: install
	$(BIN)/mypy

pytest: install system-deps
	$(BIN)/pytest -q -n $(TEST_WORKERS)

test: install system-deps
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy
	$(BIN)/pytest -q -n $(TEST_WORKERS)

# No slow tests (marked `slow`: real embedding runs, subprocess servers, the demo, Groovy runs).
test-fast: install system-deps
	$(BIN)/ruff check $(LINTED)
	$(BIN)/pytest -q -n $(TEST_WORKERS) -m "not slow and not gpu"

protos: install
	$(PY) scripts/gen_protos.py

# Every CPU benchmark, one after another (several minutes; the GPU ones are gpu_*.py/.sh).
bench: install
	$(PY) benchmarks/bench_sic.py
	$(PY) benchmarks/bench_cluster.py
	$(PY) benchmarks/bench_server.py
	$(PY) benchmarks/bench_embed.py
	$(PY) benchmarks/bench_embed.py --model he-features --patches 1024 --repeat 3
	$(PY) benchmarks/bench_loader.py --patches 2000 --batch-size 64 --workers 1,2
	$(PY) benchmarks/bench_colors.py
	$(PY) benchmarks/bench_ray.py
	$(PY) benchmarks/bench_seeds.py
	$(PY) benchmarks/bench_deadlines.py
	$(PY) benchmarks/bench_foundation.py
	$(PY) benchmarks/bench_qupath_import.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
