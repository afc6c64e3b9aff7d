# Nexus — build, test and run. `make help` lists the targets.
SHELL := /bin/bash
GO    ?= go
BIN   ?= bin
PKGS  := ./...
# Tests that need Postgres read this; CI machines have it on 127.0.0.1.
NEXUS_TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/test?sslmode=disable
export NEXUS_TEST_DATABASE_URL

.PHONY: help build test fmt-check vet unit bench clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

build: ## build every binary into bin/
	@mkdir -p $(BIN)
	$(GO) build -trimpath -o $(BIN)/ ./cmd/...

test: fmt-check vet unit ## gofmt check, go vet, then every test (as root: networking tests too)

fmt-check: ## fail when gofmt would change a file
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

vet: ## go vet
	$(GO) vet $(PKGS)

unit: ## go test (every package)
	$(GO) test -count=1 -timeout 20m $(PKGS)

bench: ## benchmarks (p50/p95 and memory are printed)
	$(GO) test -run '^$$' -bench . -benchtime 200x $(PKGS)

clean: ## remove build output
	rm -rf $(BIN)
