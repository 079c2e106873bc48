# tokenbroker: `make test` is the whole suite, as CI runs it.
GO          ?= go
CLI_VERSION := 1.0.102
CACHE       := $(CURDIR)/.cache
CLI_DIR     := $(CACHE)/copilot-$(CLI_VERSION)
COPILOT_CLI := $(CLI_DIR)/node_modules/@github/copilot-linux-x64/copilot

# Nothing a test runs may reach a real identity service.
CLEAN_ENV = env $$(env | sed -n 's/^\(AZURE_[^=]*\|IDENTITY_[^=]*\|MSI_[^=]*\|IMDS_ENDPOINT\)=.*/-u \1/p')

# Two modules, one workspace (go.work): the library at the root, and
# cmd/tokenload with the load tool's own dependencies. From the root,
# ./... is the library's packages only; PKGS names both modules'.
PKGS := ./... ./cmd/tokenload/...

.PHONY: test vet tidy cli browser jaeger jaeger-up fuzz vulncheck
test: cli browser jaeger vet vulncheck
	$(CLEAN_ENV) TOKENBROKER_REQUIRE_CLI=1 COPILOT_CLI_PATH=$(COPILOT_CLI) TOKENBROKER_REQUIRE_BROWSER=1 \
		TOKENBROKER_JAEGER=$(JAEGER) $(GO) test -race -count=1 -timeout 20m $(PKGS)

vet: tidy
	$(GO) vet $(PKGS)

# Each module's go.mod and go.sum hold what its packages import, no more:
# a service importing the library gets the library's requirements only.
tidy:
	GOWORK=off $(GO) mod tidy -diff
	cd cmd/tokenload && GOWORK=off $(GO) mod tidy -diff

# The real Copilot CLI for the e2e tests, from npm, into a git-ignored cache.
cli: $(COPILOT_CLI)
$(COPILOT_CLI):
	mkdir -p $(CLI_DIR)
	npm install --prefix $(CLI_DIR) --no-audit --no-fund --loglevel=error @github/copilot-linux-x64@$(CLI_VERSION)
	test -x $@

# Headless Chromium for the tokenload report's browser check
# (cmd/tokenload/browser_test.go): Debian's package, installed when no
# chromium is on PATH (needs root, or run the two apt-get lines yourself).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
		apt-get update && apt-get install -y chromium; }
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1

# Jaeger for tokenload's traces (cmd/tokenload/jaeger_test.go, and for
# people: make jaeger-up). Its own tools module (cmd/tokenload/jaeger, not in
# go.work: its large graph must not move the versions the two modules are
# built with) pins the version; built once into the git-ignored cache, in a
# temporary file renamed when whole. The tests skip without it, saying
# why; TOKENBROKER_REQUIRE_JAEGER=1 (.ci/run) makes that a failure.
JAEGER_VERSION := $(shell sed -n 's/^[[:space:]]*github.com\/jaegertracing\/jaeger \(v[^ ]*\).*/\1/p' cmd/tokenload/jaeger/go.mod)
JAEGER         := $(CACHE)/jaeger-$(JAEGER_VERSION)/jaeger
jaeger: $(JAEGER)
$(JAEGER): cmd/tokenload/jaeger/go.mod cmd/tokenload/jaeger/go.sum
	mkdir -p $(dir $@)
	cd cmd/tokenload/jaeger && GOWORK=off $(GO) build -o $@.tmp github.com/jaegertracing/jaeger/cmd/jaeger
	mv $@.tmp $@

# Jaeger in the foreground, in memory, on 127.0.0.1 only (ports in
# cmd/tokenload/jaeger/jaeger.yaml); Ctrl-C stops it and its traces go.
jaeger-up: $(JAEGER)
	@echo "Jaeger $(JAEGER_VERSION): OTLP gRPC 127.0.0.1:4317, HTTP 127.0.0.1:4318; query API http://127.0.0.1:16686/api/"
	@echo "In another terminal:"
	@echo "  OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 OTEL_METRICS_EXPORTER=none go run ./cmd/tokenload -trace otlp-grpc"
	$(JAEGER) --config cmd/tokenload/jaeger/jaeger.yaml

# Fuzzing. `go test` (so `make test`) runs every target on its checked-in
# seed corpus (transport/testdata/fuzz); this runs each for FUZZTIME.
FUZZTIME     ?= 30s
FUZZ_TARGETS := FuzzDecodeTokenRequest FuzzDecodeTokenRequestFields FuzzReadObject FuzzConn
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		echo "== $$t ($(FUZZTIME))"; \
		$(GO) test -run '^$$' -fuzz "^$$t\$$" -fuzztime $(FUZZTIME) ./transport/; \
	done

# govulncheck, offline: the vulnerability database ships as a Go module
# (golang.org/x/vulndb), indexed once into a git-ignored cache. The scan
# runs with a patched Go from the module proxy: the machine's own Go 1.26.8
# has standard-library vulnerabilities fixed since, which would flag any
# HTTP server. go.mod stays at go 1.26 so the local Go builds the project.
# Fails on a known vulnerability in code the project calls.
VULNDB_VERSION := v0.0.0-20261105234957-e22db6528018
VULNDB         := $(CACHE)/vulndb-$(VULNDB_VERSION)
GOVULNCHECK    := golang.org/x/vuln/cmd/govulncheck@v1.9.0
SCAN_GO        := go1.27.3
vulncheck: $(VULNDB)/index/db.json
	GOTOOLCHAIN=$(SCAN_GO) $(GO) run $(GOVULNCHECK) -db file://$(VULNDB) $(PKGS)

# Downloaded from outside this module (cd /) so go.mod and go.sum stay
# untouched; built into a temporary directory and renamed, so an
# interrupted build is redone rather than half used.
$(VULNDB)/index/db.json:
	rm -rf $(VULNDB).tmp && mkdir -p $(VULNDB).tmp
	dir=$$(cd / && $(GO) mod download -json golang.org/x/vulndb@$(VULNDB_VERSION) | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$$/\1/p'); \
		test -n "$$dir" && cd "$$dir" && $(GO) run ./cmd/indexdb -vulns data/osv -out $(VULNDB).tmp
	rm -rf $(VULNDB) && mv $(VULNDB).tmp $(VULNDB)
	test -f $@
