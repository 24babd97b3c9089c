# The targets CI calls are the ones you run. `make demo` and `make test` do all set-up.
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: demo test fmt fmt-check clippy build build-release unit e2e services kafka-up kafka-down pg-up prometheus-tools shell-tools chromium run post-demo bench clean

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

unit: pg-up
	$(CARGO) test --workspace --exclude cvguard-tests

## Services the end-to-end tests talk to, installed and started by our own scripts.
services: kafka-up pg-up prometheus-tools shell-tools chromium

pg-up:
	scripts/pg-up.sh

prometheus-tools:
	scripts/prometheus-tools.sh

shell-tools:
	scripts/shell-tools.sh

chromium:
	scripts/chromium.sh

kafka-up:
	scripts/kafka-up.sh

kafka-down:
	scripts/kafka-down.sh

e2e: build services
	$(CARGO) test -p cvguard-tests

## The service on the shipped config: HTTP ingest on 127.0.0.1:8088. PROFILES=FILE serves
## another board's profiles (make demo's: data/demo/accounts.csv).
PROFILES ?=
run: build-release
	./target/release/cvguard serve --config config/cvguard.toml $(if $(PROFILES),--profiles $(PROFILES))

## Posts the weekend `make demo` simulated to a running `make run PROFILES=data/demo/accounts.csv`.
post-demo:
	scripts/post-events.sh data/demo/events.ndjson

## Microbenchmarks (criterion), the end-to-end benchmarks and the workbench's month (replay and a
## two-config backtest of the release binary, about a minute); figures in docs/PERFORMANCE.md.
bench: build-release kafka-up
	$(CARGO) bench -p cvguard-benches --bench micro -- --warm-up-time 1 --measurement-time 3
	$(CARGO) bench -p cvguard-benches --bench e2e
	$(CARGO) bench -p cvguard-benches --bench kafka
	scripts/bench-ingest.sh
	$(CARGO) bench -p cvguard-benches --bench workbench

clean:
	$(CARGO) clean
	rm -rf data
