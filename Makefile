# The two everyday commands are `make run` and `make test`; see README.md.
GO ?= go

.PHONY: run test build vet fuzz generate k8s-binaries helm-binary images clean

# staticcheck, pinned in hack/tools/go.mod, built once per version into a cache outside the
# repository (fresh clones, CI's included, reuse it).
STATICCHECK_VERSION := $(shell sed -n 's|^[[:space:]]*honnef.co/go/tools \(v[^ ]*\).*|\1|p' hack/tools/go.mod)
STATICCHECK := $(HOME)/.cache/flotilla/tools/staticcheck-$(STATICCHECK_VERSION)

# The server on its embedded SQLite store (./flotilla-data) with simulated clusters and a
# sample bundle; see hack/demo.sh.
run:
	hack/demo.sh

build:
	$(GO) build -o bin/flotilla ./cmd/flotilla
	@if [ -d cmd/flotilla-agent ] && ls cmd/flotilla-agent/*.go >/dev/null 2>&1; then $(GO) build -o bin/flotilla-agent ./cmd/flotilla-agent; fi

# Formatting, vet and staticcheck (also over the failpoints that only test builds compile),
# and go.mod/go.sum exactly as `go mod tidy` leaves them.
vet: $(STATICCHECK)
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) vet ./...
	$(GO) vet -tags flotilla_failpoints ./internal/store/sqlstore
	@$(GO) mod tidy -diff >/dev/null || { $(GO) mod tidy -diff; echo "go.mod/go.sum are not tidy: run go mod tidy"; exit 1; }
	@cd hack/tools && $(GO) mod tidy -diff >/dev/null || { $(GO) mod tidy -diff; echo "hack/tools/go.mod/go.sum are not tidy: run go mod tidy there"; exit 1; }
	$(STATICCHECK) ./...
	$(STATICCHECK) -tags flotilla_failpoints ./internal/store/sqlstore

# Generated files: the OpenAPI descriptions from package api's doc comments (a test fails
# while they are stale).
generate:
	$(GO) generate ./internal/apiserver

$(STATICCHECK):
	cd hack/tools && $(GO) build -o $@ honnef.co/go/tools/cmd/staticcheck

# Every fuzz target for FLOTILLA_FUZZTIME (default 3s) beyond its corpus; see hack/fuzz.sh.
fuzz:
	hack/fuzz.sh

# Kubernetes API server binaries for the agent's tests, cached outside the repository.
k8s-binaries:
	hack/k8s-binaries.sh >/dev/null

# The real helm CLI the Helm tests compare the agent's releases with, cached likewise.
helm-binary:
	hack/helm-binary.sh >/dev/null

# The whole test suite: formatting and vet, the agent's cross-build, and every test
# (real SQLite, PostgreSQL, Kubernetes API servers, git servers), then every fuzz target for
# a few seconds. One package at a time: several start servers and simulated fleets, and two
# cores shared by them make timing flaky.
test: vet k8s-binaries helm-binary
	@if ls cmd/flotilla-agent/*.go >/dev/null 2>&1; then GOOS=linux GOARCH=arm64 $(GO) build -o /dev/null ./cmd/flotilla-agent && echo "flotilla-agent builds for linux/arm64"; fi
	FLOTILLA_K8S_BIN=$$(hack/k8s-binaries.sh) FLOTILLA_HELM_BIN=$$(hack/helm-binary.sh) $(GO) test -p 1 -timeout 45m ./...
	hack/fuzz.sh

# Container images of the server and the agent for linux/amd64 and linux/arm64, without a
# container engine, as OCI layouts in dist/oci; VERSION=v1.2.3, PUSH=registry/prefix to push.
images:
	$(GO) run ./hack/images --version $(or $(VERSION),dev) --out dist/oci $(if $(PUSH),--push $(PUSH))

clean:
	rm -rf bin dist
