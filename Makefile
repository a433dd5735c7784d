# fpw_pushdown: the two commands a user runs are `make demo` and `make test`.
PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config
PGDATA_PGRX_TEST ?= /tmp/fpw_pushdown_pgrx_test
CARGO ?= cargo

# `make install` puts the helper at $(DESTDIR)$(PREFIX)/bin/redo-helper and the extension where
# $(PG_CONFIG) says, under $(DESTDIR).
PREFIX ?= /usr/local
DESTDIR ?=
# `cargo pgrx package` stages the extension's files here, as absolute paths under it.
PGRX_PACKAGE_DIR = target/release/fpw_pushdown-pg15

.PHONY: all setup build install deb test test-all test-rust test-rust-all test-pgrx test-pg test-deb demo demo-shards bench fmt lint clean

all: build

# Development and test machines only: installs Debian packages and cargo-pgrx (never run by
# `build`, `install` or `deb`, which a production host may run).
setup:
	bash scripts/setup.sh

# Builds only: the helper binary and the extension's files (needs a Rust toolchain,
# cargo-pgrx and postgresql-server-dev-15, which `make setup` installs on a build machine).
build:
	$(CARGO) build --release --locked -p redo-helper
	cd extension && $(CARGO) pgrx package --pg-config $(PG_CONFIG) >/dev/null

# Builds, then copies files; installs no package and neither starts nor stops any cluster (a
# running PostgreSQL loads the new library in new sessions after CREATE/ALTER EXTENSION).
install: build
	install -D -m 0755 target/release/redo-helper $(DESTDIR)$(PREFIX)/bin/redo-helper
	cd $(PGRX_PACKAGE_DIR) && find . -type f | while read -r f; do \
		install -D -m 0644 "$$f" "$(DESTDIR)/$${f#./}" || exit 1; done

# Debian packages postgresql-15-fpw-pushdown and redo-helper, under target/debian/.
deb: build
	bash packaging/build-deb.sh

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

# The .deb packages built, installed with dpkg into the machine, used and removed; and a
# `make install` beside a running cluster (packaging/test-deb.sh, packaging/test-install.sh).
test-deb: deb
	bash packaging/test-deb.sh
	bash packaging/test-install.sh

demo: setup install
	$(CARGO) build --release -p redo-helper
	bash bench/demo.sh

# The helper as two shards over SeaweedFS (the S3 gateway scripts/setup.sh installs), on
# loopback: the split of pages and images, reads routed between the shards, one BASE_BACKUP.
demo-shards: setup
	$(CARGO) build --release -p redo-helper
	bash bench/demo-shards.sh

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
