# fpw_pushdown: the two commands a user runs are `make demo` and `make test`.
PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config
PGDATA_PGRX_TEST ?= /tmp/fpw_pushdown_pgrx_test
CARGO ?= cargo

.PHONY: all setup build install test test-all test-rust test-rust-all test-pgrx test-pg demo bench fmt lint clean

all: build

setup:
	bash scripts/setup.sh

build: setup
	$(CARGO) build --release -p redo-helper
	cd extension && $(CARGO) pgrx package --pg-config $(PG_CONFIG) >/dev/null

# Installs the extension into the system PostgreSQL 15 (needs root, as on this machine).
install: setup
	cd extension && $(CARGO) pgrx install --release --pg-config $(PG_CONFIG)

test: setup test-rust test-pgrx test-pg test-pg-versions
	@echo "make test: all test suites passed"

# make test plus the tests left out of it for time (#[ignore]: torn-page repair on
# PostgreSQL 16 and 18).
test-all: setup test-rust-all test-pgrx test-pg test-pg-versions test-pgrx-versions
	@echo "make test-all: all test suites passed"

# Plain-Rust tests of the pgrx-free core (decoder, ...).
test-rust:
	$(CARGO) test -p redo-helper

test-rust-all:
	$(CARGO) test -p redo-helper -- --include-ignored

# The extension's #[test] and #[pg_test] functions in a pgrx-managed throwaway cluster.
test-pgrx:
	rm -rf $(PGDATA_PGRX_TEST)
	cd extension && $(CARGO) pgrx test pg15 --runas postgres --pgdata $(PGDATA_PGRX_TEST)
	rm -rf $(PGDATA_PGRX_TEST)

# pg_regress suites against real clusters (needs the extension installed and the helper built).
test-pg: install
	$(CARGO) build --release -p redo-helper
	bash pg_tests/run.sh

demo: setup install
	$(CARGO) build --release -p redo-helper
	bash bench/demo.sh

bench: setup install
	$(CARGO) build --release -p redo-helper
	bash bench/run.sh

fmt:
	$(CARGO) fmt --all

# Formatting and clippy (workspace lints, warnings are errors) on both crates. Needs setup:
# the extension's build (pgrx-pg-sys) needs libclang and `cargo pgrx init`.
lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy -p redo-helper --all-targets -- -D warnings
	$(CARGO) clippy -p fpw_pushdown --all-targets -- -D warnings

clean:
	$(CARGO) clean
	rm -rf pg_tests/results

# --- The extension on PostgreSQL 17 and 18 ---
# The npm servers in /opt/fpw_pushdown/pg/<major> with Debian's headers and a pg_config of ours
# in /opt/fpw_pushdown/pgdev/<major> (scripts/pg-versions.sh, scripts/pg-dev.sh; make setup).
PG_DEV_DIR ?= /opt/fpw_pushdown/pgdev

.PHONY: install-pg17 install-pg18 test-pgrx-17 test-pgrx-18 test-pgrx-versions test-pg-17 test-pg-18 \
	test-pg-versions

# Release build into that server's lib/postgresql and share/postgresql/extension.
install-pg17 install-pg18: install-pg%: setup
	cd extension && $(CARGO) pgrx install --release --pg-config $(PG_DEV_DIR)/$*/bin/pg_config

# The extension's #[test]s and #[pg_test]s on 17 / 18 (not in `make test`: see test-all).
test-pgrx-17 test-pgrx-18: test-pgrx-%:
	rm -rf $(PGDATA_PGRX_TEST)-$*
	cd extension && $(CARGO) pgrx test pg$* --runas postgres --pgdata $(PGDATA_PGRX_TEST)-$*
	rm -rf $(PGDATA_PGRX_TEST)-$*

test-pgrx-versions: test-pgrx-17 test-pgrx-18

# pg_regress suites "versions" and "minimal" (pg_tests/run.sh) on 17 / 18. A debug build is
# installed: it is the test servers' copy, and a release build (LTO) of pgrx for each version
# would cost minutes.
test-pg-17 test-pg-18: test-pg-%:
	$(CARGO) build --release -p redo-helper
	cd extension && $(CARGO) pgrx install --pg-config $(PG_DEV_DIR)/$*/bin/pg_config
	FPW_PG_MAJOR=$* bash pg_tests/run.sh

# The representative set `make test` runs on 17 and 18.
test-pg-versions: test-pg-17 test-pg-18
	@echo "make test-pg-versions: the extension's pg_regress suites passed on PostgreSQL 17 and 18"
