# Two commands: `make run` and `make test`. Both set everything up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= config/gateway.toml

.PHONY: run test install system-deps check-config bench bench-download clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/ppap-gateway --config $(CONFIG) serve

check-config: $(STAMP)
	$(BIN)/ppap-gateway --config $(CONFIG) check-config

# Programs the end-to-end tests drive for real (Debian packages): Chromium and CJK fonts.
system-deps:
	@command -v chromium >/dev/null 2>&1 && [ -d /usr/share/fonts/opentype/noto ] || { \
	  echo "installing chromium and fonts-noto-cjk (Debian packages)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium fonts-noto-cjk >/dev/null; }

test: $(STAMP) system-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/python bench/relay_throughput.py

bench-download: $(STAMP)
	$(BIN)/python bench/download_throughput.py

clean:
	rm -rf $(VENV) var build *.egg-info
