# Two commands: `make run` and `make test`. Both set everything up on a fresh machine.
# `make test-fast`: the unit floor only (no socket, no process, no system packages), well under 30 s.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= config/gateway.toml

.PHONY: run test test-fast install wheel system-deps check-config fuzz bench bench-download bench-load bench-deps bench-unlock bench-inspect bench-pending bench-commit bench-cluster clean

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

# What a mail server installs (README.md, "As a service"): the wheel, templates included, in dist/.
# `make` itself installs editable; tests/e2e/test_packaging.py builds and runs the wheel. build/
# goes first: setuptools reuses build/lib, where a removed module would linger into the wheel.
wheel: $(BIN)/python
	rm -rf build
	$(BIN)/python -m pip wheel --no-deps -q -w dist .

# Programs the tests drive for real (Debian packages), installed only when missing: Chromium and
# CJK fonts for the browser test; clamd for scanning (the tests start their own with a local
# EICAR-only database; freshclam, which needs the network, is never run); Postfix (with its
# smtp-source/smtp-sink in /usr/sbin) and swaks for the Postfix and load tests, which run private
# instances on loopback ports. Postfix is preseeded to "No configuration": the system instance gets
# no main.cf and is never started or used. 7-Zip (7zz) and libarchive (bsdtar) are the fuzzer's
# archive readers (tests/fuzz/oracle.py). systemd's own tools check the shipped unit
# (systemd-analyze verify/security, systemd-sysusers; tests/e2e/test_packaging.py). PostgreSQL for
# the store on PostgreSQL: the tests initdb private clusters on loopback ports
# (tests/support/postgres.py); the system's own cluster is not used.
system-deps:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	[ -d /usr/share/fonts/opentype/noto ] || missing="$$missing fonts-noto-cjk"; \
	command -v clamd >/dev/null 2>&1 || [ -x /usr/sbin/clamd ] || missing="$$missing clamav-daemon clamav"; \
	command -v postfix >/dev/null 2>&1 || [ -x /usr/sbin/postfix ] || missing="$$missing postfix"; \
	command -v swaks >/dev/null 2>&1 || missing="$$missing swaks"; \
	command -v 7zz >/dev/null 2>&1 || missing="$$missing 7zip"; \
	command -v bsdtar >/dev/null 2>&1 || missing="$$missing libarchive-tools"; \
	command -v systemd-analyze >/dev/null 2>&1 || missing="$$missing systemd"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	[ -z "$$missing" ] || { \
	  echo "installing$$missing (Debian packages)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  echo "postfix postfix/main_mailer_type select No configuration" | $$SUDO debconf-set-selections && \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; }

test: $(STAMP) system-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider

# Everything but the end-to-end tests (tests/e2e/, marked `e2e` by directory in tests/conftest.py):
# nothing here opens a socket or starts a process, so no system packages are needed.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not e2e" tests/unit

# A fuzz campaign against one real gateway (tests/fuzz): FUZZ_SECONDS (default 1200) of mutated
# PPAP mail; summary and reproducers in test-artifacts/fuzz, the figures in docs/security.md;
# exit 1 on any violation.
fuzz: $(STAMP) system-deps
	$(BIN)/python -m tests.fuzz --seconds $${FUZZ_SECONDS:-1200} --seed $${FUZZ_SEED:-$$(date +%s)} --out test-artifacts/fuzz --write-docs docs/security.md

bench: $(STAMP)
	$(BIN)/python bench/relay_throughput.py

bench-download: $(STAMP)
	$(BIN)/python bench/download_throughput.py

# Issue 14's table: smtp-source -F (2 MB AES-ZIP PPAP mail, 2 KB plain; 1 and 20 sessions) →
# {nothing, plain Postfix, Postfix + MIMEDefang, gateway, Postfix → gateway → Postfix} → smtp-sink,
# medians of 3 alternating rounds, the pending-work row and the targets (bench/README.md).
# BENCH_LOAD_ARGS adds options, e.g. BENCH_LOAD_ARGS="--rounds 5 --write-docs docs/benchmarks.md".
bench-load: $(STAMP) system-deps bench-deps
	$(BIN)/python bench/postfix_load.py $(BENCH_LOAD_ARGS)

# What bench-load alone needs (not `make test`): the MIMEDefang peer (Debian mimedefang and
# Archive::Zip for its filter, bench/peers/mimedefang/). The bench starts its own multiplexor and
# milter; the Debian service, which the package may have started, is stopped. py-spy (PyPI, into
# the venv, bench only) samples the gateway for the profile.
bench-deps: $(STAMP)
	@[ -x $(BIN)/py-spy ] || $(BIN)/pip install -q py-spy
	@missing=""; \
	command -v mimedefang-multiplexor >/dev/null 2>&1 || [ -x /usr/bin/mimedefang-multiplexor ] || missing="$$missing mimedefang"; \
	perl -MArchive::Zip -e 1 >/dev/null 2>&1 || missing="$$missing libarchive-zip-perl"; \
	[ -z "$$missing" ] || { \
	  echo "installing$$missing (Debian packages)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null && \
	  { [ ! -x /etc/init.d/mimedefang ] || $$SUDO /etc/init.d/mimedefang stop >/dev/null 2>&1 || true; }; }

# What looking into files costs per kind of mail, against the stdlib parse (and an older tree
# with BASELINE=PATH).
bench-inspect: $(STAMP)
	$(BIN)/python bench/inspect_cost.py $(if $(BASELINE),--baseline $(BASELINE)) --write-docs docs/benchmarks.md

bench-pending: $(STAMP)
	$(BIN)/python bench/pending_work.py --write-docs docs/benchmarks.md

# fsyncs per message and msgs/s, SQLite synchronous=FULL against group commit, in one run (needs cc).
bench-commit: $(STAMP)
	$(BIN)/python bench/commit_cost.py $(BENCH_COMMIT_ARGS)

bench-unlock: $(STAMP) system-deps
	$(BIN)/python bench/unlock_time.py --write-docs docs/benchmarks.md

# Issue 15's figures: per message, the clustered store (PostgreSQL metadata; files in a directory
# or in PostgreSQL) against the embedded one, and two nodes against one; smtp-source → gateway →
# smtp-sink with a private PostgreSQL (bench/README.md). BENCH_CLUSTER_ARGS adds options, e.g.
# BENCH_CLUSTER_ARGS="--write-docs docs/benchmarks.md".
bench-cluster: $(STAMP) system-deps
	$(BIN)/python bench/cluster_load.py $(BENCH_CLUSTER_ARGS)

clean:
	rm -rf $(VENV) var build dist *.egg-info
