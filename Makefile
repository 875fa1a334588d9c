# The two everyday commands are `make run` and `make test`; see README.md.
GO ?= go

.PHONY: run test build vet k8s-binaries clean

# The server on its embedded SQLite store (./flotilla-data) with simulated clusters and a
# sample bundle; see hack/demo.sh.
run:
	hack/demo.sh

build:
	$(GO) build -o bin/flotilla ./cmd/flotilla
	@if [ -d cmd/flotilla-agent ] && ls cmd/flotilla-agent/*.go >/dev/null 2>&1; then $(GO) build -o bin/flotilla-agent ./cmd/flotilla-agent; fi

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) vet ./...

# Kubernetes API server binaries for the agent's tests, cached outside the repository.
k8s-binaries:
	hack/k8s-binaries.sh >/dev/null

# The whole test suite: formatting and vet, the agent's cross-build, and every test
# (real SQLite, PostgreSQL, Kubernetes API servers, git servers). One package at a time:
# several start servers and simulated fleets, and two cores shared by them make timing flaky.
test: vet k8s-binaries
	@if ls cmd/flotilla-agent/*.go >/dev/null 2>&1; then GOOS=linux GOARCH=arm64 $(GO) build -o /dev/null ./cmd/flotilla-agent && echo "flotilla-agent builds for linux/arm64"; fi
	FLOTILLA_K8S_BIN=$$(hack/k8s-binaries.sh) $(GO) test -p 1 -timeout 45m ./...

clean:
	rm -rf bin
