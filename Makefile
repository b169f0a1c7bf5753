# flarego — see README.md. Every target works on a fresh Debian machine with Go 1.26.
GO        ?= go
# The model's AVX-512 kernels need Go's SIMD experiment; without it (or on a
# machine without AVX-512) the same code runs portable loops.
export GOEXPERIMENT ?= simd
PYTHON    ?= /usr/bin/python3
BIN       := bin/flarego
FUZZTIME  ?= 10s
# Debian packages the interop checks run against (the real peers).
PY_DEBS   := python3-torch python3-torchvision python3-cryptography python3-numpy libjemalloc2

.PHONY: all build test race fuzz interop python-peers bench demo proto lint clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o $(BIN) ./worker

# Unit tests, command-line script tests, the race detector, then each fuzz
# target briefly.
test:
	$(GO) vet ./...
	$(GO) test ./...
	GOEXPERIMENT= $(GO) test ./model/...
	$(GO) test -race ./persistor/... ./model/... ./flare/...
	$(MAKE) --no-print-directory fuzz

# The command's end-to-end tests under the race detector (≈ 8 min on 2
# cores: many servers and clients in one process); CI runs it.
race:
	$(GO) test -race -timeout 30m ./worker

fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzDecodePT$$' -fuzztime $(FUZZTIME) ./persistor
	$(GO) test -run '^$$' -fuzz '^FuzzDecrypt$$' -fuzztime $(FUZZTIME) ./persistor
	$(GO) test -run '^$$' -fuzz '^FuzzUnpickle$$' -fuzztime $(FUZZTIME) ./persistor/pickle
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeShareable$$' -fuzztime $(FUZZTIME) ./flare
	$(GO) test -run '^$$' -fuzz '^FuzzRequestCodec$$' -fuzztime $(FUZZTIME) ./flare
	$(GO) test -run '^$$' -fuzz '^FuzzAdminPathsStayInWorkspace$$' -fuzztime $(FUZZTIME) ./flare
	$(GO) test -run '^$$' -fuzz '^FuzzAccumulate$$' -fuzztime $(FUZZTIME) ./flare
	$(GO) test -run '^$$' -fuzz '^FuzzReadRequest$$' -fuzztime $(FUZZTIME) ./flare/hci
	$(GO) test -run '^$$' -fuzz '^FuzzSpec$$' -fuzztime $(FUZZTIME) ./model

# Installs the Python peers with apt when they are missing.
python-peers:
	@if $(PYTHON) -c 'import torch, torchvision, cryptography, numpy' 2>/dev/null && [ -e /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 ]; then \
		echo "python peers: present ($$($(PYTHON) -c 'import torch, cryptography; print("torch", torch.__version__, "cryptography", cryptography.__version__)'))"; \
	else \
		echo "python peers: installing $(PY_DEBS) with apt-get"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(PY_DEBS) >/dev/null; \
		$(PYTHON) -c 'import torch, cryptography, numpy'; \
	fi

# Cross-checks against the real peers: Python's cryptography and torch 1.13.
interop: python-peers
	PYTHON=$(PYTHON) $(GO) test -tags interop -count=1 -v -run Interop ./persistor ./model ./flare ./worker

bench: build python-peers
	$(GO) test -run '^$$' -bench . -benchtime 5x ./persistor ./model
	$(BIN) bench persist --python $(PYTHON)
	$(BIN) bench model --python $(PYTHON)

demo: build
	./scripts/demo.sh

# Regenerates the gRPC code from proto/*/*.proto (protoc from Debian's
# protobuf-compiler, the Go plugins from the module proxy).
PROTOC_GEN_GO      := google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
PROTOC_GEN_GO_GRPC := google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
proto:
	@command -v protoc >/dev/null || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); $$SUDO apt-get install -y -qq protobuf-compiler; }
	GOBIN=$(CURDIR)/bin $(GO) install $(PROTOC_GEN_GO)
	GOBIN=$(CURDIR)/bin $(GO) install $(PROTOC_GEN_GO_GRPC)
	PATH=$(CURDIR)/bin:$$PATH protoc -I proto --go_out=proto --go_opt=paths=source_relative \
		--go-grpc_out=proto --go-grpc_opt=paths=source_relative proto/fedlearn/federated.proto proto/admin/admin.proto

lint:
	@test -z "$$(gofmt -l .)" || { gofmt -l .; echo "gofmt: files above need formatting"; exit 1; }
	$(GO) vet ./...
	$(GO) vet -tags interop ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

clean:
	rm -rf bin
