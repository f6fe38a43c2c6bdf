# Two commands matter: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python

.PHONY: demo test lint typecheck pytest install install-demo system-deps protos bench clean

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

# System packages the tests use (Java + Groovy for the QuPath scripts), on Debian when run as root.
system-deps:
	@if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	  if ! command -v groovy >/dev/null 2>&1 || [ ! -f /usr/share/java/gson.jar ]; then \
	    echo "installing Java and Groovy from Debian (for the Groovy script tests)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jdk-headless groovy libgoogle-gson-java >/dev/null 2>&1 || \
	    (apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jdk-headless groovy libgoogle-gson-java >/dev/null) || \
	    echo "warning: could not install groovy; Groovy tests will be skipped"; \
	  fi; \
	fi

demo: install-demo
	$(BIN)/histosic demo

lint: install
	$(BIN)/ruff check server tests benchmarks scripts
	$(BIN)/ruff format --check server tests benchmarks scripts

typecheck: install
	$(BIN)/mypy

pytest: install system-deps
	$(BIN)/pytest -q

test: install system-deps
	$(BIN)/ruff check server tests benchmarks scripts
	$(BIN)/ruff format --check server tests benchmarks scripts
	$(BIN)/mypy
	$(BIN)/pytest -q

protos: install
	$(PY) scripts/gen_protos.py

bench: install
	$(PY) benchmarks/bench_sic.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
