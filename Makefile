# Nexus — build, run and test. `make help` lists the targets.
SHELL := /bin/bash
BIN   ?= bin
PKGS  := ./...
# A Go new enough for go.mod (scripts/setup.sh installs one when missing).
GO    ?= $(shell scripts/find-go.sh)
# Tests that need Postgres use this; `scripts/setup.sh --test` creates it.
NEXUS_TEST_DATABASE_URL ?= postgres://nexus:nexus@127.0.0.1:5432/nexus_test?sslmode=disable
export NEXUS_TEST_DATABASE_URL
# Where `make up` keeps its state.
DATA_DIR ?= ./.nexus

.PHONY: help deps build up images test check fmt-check tidy-check vet unit bench bench-fleet bench-guest bench-floor bench-scale bench-ui web-vendor clean bench-sdk release

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

deps: ## install what is missing (Go, build tools)
	@scripts/setup.sh

build: deps ## build nexus, nexus-jail and firecracker-sim into bin/ (static: a jailed VMM has no libc)
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(shell scripts/find-go.sh) build -trimpath -o $(BIN)/ ./cmd/...

up: build ## install what is missing, build, and run manager + agent + SQLite (needs root)
	@if [ "$$(id -u)" -ne 0 ]; then echo "nexus up creates TAP devices: running it with sudo"; fi
	@$$( [ "$$(id -u)" -eq 0 ] || echo sudo ) env PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/nexus up --data-dir $(DATA_DIR)

images: build ## kernel + initrd + busybox rootfs that boot, from Debian packages, into FC_IMAGES_DIR; registered when NEXUS_ADDR/NEXUS_TOKEN are set (root)
	@$$( [ "$$(id -u)" -eq 0 ] || echo sudo --preserve-env=FC_IMAGES_DIR,FC_RUN_DIR,NEXUS_ADDR,NEXUS_TOKEN,IMAGE_PROJECT,ROOTFS_MIB,IMAGES_CACHE,IMAGES_MANIFEST,KERNEL_PACKAGE ) NEXUS_BIN=$(BIN)/nexus scripts/build-images.sh

test: ## install what is missing (incl. a local Postgres), then gofmt, go vet and every test
	@scripts/setup.sh --test
	@$(MAKE) --no-print-directory check

check: fmt-check tidy-check vet unit ## gofmt, go mod tidy, go vet and every test, without installing anything

fmt-check: ## fail when gofmt would change a file
	@out=$$($(dir $(GO))gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

tidy-check: ## fail when `go mod tidy` would change go.mod or go.sum (needs the module proxy or a warm module cache)
	@$(GO) mod tidy -diff || { echo "go.mod/go.sum are not tidy: run 'go mod tidy' and commit the result"; exit 1; }

vet: ## go vet
	$(GO) vet $(PKGS)

unit: ## go test (every package; as root the networking tests run too)
	$(GO) test -count=1 -timeout 20m $(PKGS)

bench: build ## 200 VMs created and deleted on one host: latency, RSS, leftovers
	$(GO) test -count=1 -run '^$$' -bench BenchmarkFleet200 -benchtime 1x -timeout 20m ./test/e2e/

bench-fleet: build ## 10 hosts × 100 VMs: churn, mass VMM kill, convergence, memory, leftovers (root)
	$(GO) test -count=1 -run '^$$' -bench BenchmarkFleet$$ -benchtime 1x -timeout 30m ./test/e2e/

bench-guest: ## guest images: boot-to-ready p50 under QEMU microvm, image build cold/cached/warm (root, downloads the kernel package)
	$(GO) test -count=1 -run '^$$' -bench BenchmarkGuest -benchtime 1x -timeout 20m ./test/guest/

bench-floor: build ## Nexus create→running vs a minimal spawn-and-configure program, interleaved, after 10 unmeasured boots of each; ratio, CPU and context switches per create; then sequential deletes against its teardowns (root; NEXUS_BENCH_FLOOR_N, NEXUS_BENCH_FLOOR_WARMUP; NEXUS_BENCH_ENGINE=postgres; NEXUS_BENCH_PROFILE=DIR: manager and agent CPU profiles)
	$(GO) test -count=1 -run '^$$' -bench BenchmarkFloor$$ -benchtime 1x -timeout 20m ./test/e2e/

bench-scale: build ## 10,000 VMs on 100 hollow agents: creates, churn, reads under load, reconcile, memory per VM (NEXUS_BENCH_ENGINE=postgres adds a failover)
	$(GO) test -count=1 -run '^$$' -bench BenchmarkScale$$ -benchtime 1x -timeout 30m ./test/e2e/

bench-ui: ## /metrics scrape with 1,000 VMs (manager, agent) and the console's VM list with 1,000 VMs in headless Chromium (root)
	$(GO) test -count=1 -run '^$$' -bench BenchmarkMetricsScrape1000VMs -benchtime 50x ./internal/api/
	$(GO) test -count=1 -run '^$$' -bench BenchmarkAgentScrape1000VMs -benchtime 20x ./internal/agent/
	$(GO) test -count=1 -run '^$$' -bench BenchmarkConsoleVMList1000 -benchtime 5x -timeout 10m ./test/e2e/

web-vendor: ## fetch the console's vendored uPlot again from the npm registry (only to change its version)
	@scripts/vendor-web.sh

release: ## reproducible static builds for linux/amd64 and arm64 in dist/ with tarballs and SHA256SUMS (scripts/release.sh; VERSION=v1.2.3)
	@GO=$(GO) scripts/release.sh

clean: ## remove build output
	rm -rf $(BIN) dist

bench-sdk: ## what the Go SDK adds per call over plain net/http (p50/p95)
	$(GO) test -count=1 -run '^$$' -bench BenchmarkOverhead -benchtime 5000x ./pkg/nexus/
