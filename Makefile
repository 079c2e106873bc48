# tokenbroker: `make test` is the whole suite, as CI runs it.
GO          ?= go
CLI_VERSION := 1.0.102
CACHE       := $(CURDIR)/.cache
CLI_DIR     := $(CACHE)/copilot-$(CLI_VERSION)
COPILOT_CLI := $(CLI_DIR)/node_modules/@github/copilot-linux-x64/copilot

# Nothing a test runs may reach a real identity service.
CLEAN_ENV = env $$(env | sed -n 's/^\(AZURE_[^=]*\|IDENTITY_[^=]*\|MSI_[^=]*\|IMDS_ENDPOINT\)=.*/-u \1/p')

.PHONY: test vet cli
test: cli vet
	$(CLEAN_ENV) TOKENBROKER_REQUIRE_CLI=1 COPILOT_CLI_PATH=$(COPILOT_CLI) \
		$(GO) test -race -count=1 -timeout 20m ./...

vet:
	$(GO) vet ./...

# The real Copilot CLI for the e2e tests, from npm, into a git-ignored cache.
cli: $(COPILOT_CLI)
$(COPILOT_CLI):
	mkdir -p $(CLI_DIR)
	npm install --prefix $(CLI_DIR) --no-audit --no-fund --loglevel=error @github/copilot-linux-x64@$(CLI_VERSION)
	test -x $@
