# salt-broker. The README's two commands: `make demo` and `make test`.
GO       ?= go
PYTHON   := /usr/bin/python3
BIN      := bin
export GOFLAGS := -buildvcs=false
STATICCHECK_VERSION := v0.8.2
# A count, not a duration: Go 1.26's fuzz coordinator can fail a duration-bounded run
# with a bare "context deadline exceeded" at the deadline (golang/go#75804, fixed in
# 1.27). 300000 runs take 4-12 s per target here.
FUZZTIME ?= 300000x

.PHONY: all build deb demo test unit fuzz fuzz-short lint deps tools bench bench-wan clean

all: build

# What `broker version` says (internal/buildinfo): git describe and the commit, set at
# link time because GOFLAGS=-buildvcs=false keeps Go from recording them.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
COMMIT  ?= $(shell git rev-parse --verify -q HEAD 2>/dev/null || echo unknown)
LDFLAGS := -X github.com/salt-broker/salt-broker/internal/buildinfo.Version=$(VERSION) \
	-X github.com/salt-broker/salt-broker/internal/buildinfo.Commit=$(COMMIT)

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/broker ./cmd/broker

## demo: core, edge, a simulated master and minions on loopback; prints what crossed the tunnel.
demo: build
	./$(BIN)/broker demo

## deps: what the tests need beyond Go: real libzmq peers (Debian's python3-zmq), iproute2 for the WAN lab, Prometheus and promtool for the alerts and dashboard.
deps:
	@if $(PYTHON) -c 'import zmq, msgpack' 2>/dev/null && command -v ip >/dev/null; then :; \
	elif [ "$$(id -u)" != 0 ]; then \
	  echo "make deps: python3-zmq, python3-msgpack and iproute2 are missing and installing them needs root:"; \
	  echo "  sudo apt-get install python3-zmq python3-msgpack iproute2"; exit 1; \
	else \
	  echo "make deps: installing python3-zmq python3-msgpack iproute2"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-zmq python3-msgpack iproute2 >/dev/null; \
	fi
	@command -v systemd-analyze >/dev/null || { [ "$$(id -u)" = 0 ] && echo "make deps: installing systemd (systemd-analyze, for test/deploy's unit checks)" && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null; } || echo "make deps: systemd-analyze is missing (sudo apt-get install systemd); test/deploy skips the unit checks without it"
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || { [ "$$(id -u)" = 0 ] && echo "make deps: installing prometheus (prometheus and promtool, for test/e2e's alert and dashboard checks)" && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } || { echo "make deps: prometheus and promtool are missing and installing them needs root: sudo apt-get install prometheus"; exit 1; }
	$(GO) mod download

tools: $(BIN)/staticcheck
$(BIN)/staticcheck:
	GOBIN=$(CURDIR)/$(BIN) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

lint: tools
	$(GO) vet ./...
	@fmt=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$fmt" ]; then echo "gofmt needed:"; echo "$$fmt"; exit 1; fi
	./$(BIN)/staticcheck ./...

## test: lint, every package's tests with -race (interop with real libzmq, fault tests), then short fuzz runs.
test: deps lint unit fuzz-short

unit:
	$(GO) test -race -count=1 -timeout 20m ./...

# Each fuzz target runs FUZZTIME in `make test`; `make fuzz FUZZTIME=50000000x` runs longer.
FUZZ_TARGETS := ./internal/wire:FuzzDecode ./internal/saltmsg:FuzzParse \
	./internal/zmtp:FuzzGreeting ./internal/zmtp:FuzzFrameDecoder
fuzz-short fuzz:
	@for t in $(FUZZ_TARGETS); do pkg=$${t%%:*}; fn=$${t##*:}; \
	  echo "fuzz $$pkg $$fn for $(FUZZTIME)"; \
	  $(GO) test -run '^$$' -fuzz "^$$fn$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; done

## bench: throughput and latency against baselines measured in the same run (figures, never pass/fail).
bench: deps build
	$(GO) run ./test/bench/zmtp
	$(GO) test -count=1 -run '^$$' -bench . -benchtime 1x -timeout 30m ./test/bench/pair

## bench-wan: the WAN lab's scenarios (random and bursty loss, long RTT, blackouts, a satellite link
## with 1 MiB file chunks, a bottleneck shared with a bulk TCP flow, 2,000 minions answering at once)
## for the direct link, the old forwarder and the pair over QUIC and TCP, side by side in one run; a
## latency CDF per scenario in BENCH_WAN_PLOTS (docs/bench/wan-*.png; empty: none). Needs root; about 40 min.
## One scenario or mode, other scale: make bench-wan BENCH_WAN='WAN/300ms.*/pair' BENCH_WAN_ARGS='-minions 10 -jobs 30'
BENCH_WAN ?= WAN
BENCH_WAN_ARGS ?=
BENCH_WAN_PLOTS ?= $(CURDIR)/docs/bench
bench-wan: deps
	$(GO) test -count=1 -run '^$$' -bench '$(BENCH_WAN)' -benchtime 1x -timeout 120m ./test/bench/wan -plots '$(BENCH_WAN_PLOTS)' $(BENCH_WAN_ARGS)

## deb: the Debian package (nfpm) in $(BIN)/: binary, units, example configs as conffiles,
## completions, the salt-broker user and /var/lib/salt-broker; it starts nothing.
## dpkg wants a version that starts with a digit: before the first tag, 0~git<commit>.
NFPM_VERSION := v2.48.0
NFPM := $(CURDIR)/bin/nfpm
DEB_VERSION ?= $(shell echo '$(VERSION)' | sed -E 's/^v//; s/-/+/g; /^[0-9]+\./!s/^/0~git/')
DEB_ARCH ?= $(shell $(GO) env GOARCH)
$(NFPM):
	GOBIN=$(CURDIR)/bin $(GO) install github.com/goreleaser/nfpm/v2/cmd/nfpm@$(NFPM_VERSION)
deb: build $(NFPM)
	rm -rf $(BIN)/deb && mkdir -p $(BIN)/deb
	for u in core edge; do \
	  sed 's#/usr/local/bin/broker#/usr/bin/broker#g' deploy/salt-broker-$$u.service >$(BIN)/deb/salt-broker-$$u.service || exit 1; done
	$(abspath $(BIN))/broker completion bash >$(BIN)/deb/broker.bash
	$(abspath $(BIN))/broker completion zsh >$(BIN)/deb/_broker
	rm -f $(BIN)/salt-broker_*.deb
	DEB_BIN='$(abspath $(BIN))' DEB_VERSION='$(DEB_VERSION)' DEB_ARCH='$(DEB_ARCH)' $(NFPM) package --config deploy/deb/nfpm.yaml --packager deb --target $(BIN)/

clean:
	rm -rf $(BIN)
