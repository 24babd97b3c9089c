# The targets CI calls are the ones you run. `make demo` and `make test` do all set-up.
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: demo test fmt fmt-check clippy build build-release unit e2e bench clean

## The main job: simulate the werk.nl weekend and replay it with the shipped rules.
demo: build-release
	./target/release/cvguard demo

## The whole suite: formatting, lints, unit and end-to-end tests.
test: fmt-check clippy build unit e2e

build:
	$(CARGO) build --workspace --all-targets

build-release:
	$(CARGO) build --release -p cvguard

fmt:
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit:
	$(CARGO) test --workspace --exclude cvguard-tests

e2e: build
	$(CARGO) test -p cvguard-tests

clean:
	$(CARGO) clean
	rm -rf data
