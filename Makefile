# flarego — see README.md. Every target works on a fresh Debian machine with Go 1.26.
GO        ?= go
# The model's AVX-512 kernels need Go's SIMD experiment; without it (or on a
# machine without AVX-512) the same code runs portable loops.
export GOEXPERIMENT ?= simd
PYTHON    ?= /usr/bin/python3
BIN       := bin/flarego
# Debian packages the interop checks run against (the real peers).
PY_DEBS   := python3-torch python3-torchvision python3-cryptography python3-numpy libjemalloc2 \
             python3-msgpack python3-grpcio python3-protobuf python3-psutil python3-yaml python3-requests \
             age python3-pydicom python3-pil libgdcm-tools protobuf-compiler

.PHONY: all build image test race fuzz interop interop-nvflare-main interop-nvflare-recipe python-peers debian13-root bench demo proto lint clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -tags grpcnotrace -ldflags "-s -w" -o $(BIN) ./worker

# The FCP container image, built without pulling anything: the architecture
# (SPEC, default the pneumonia model) encrypted with KEY, the static binary
# and the job configs on scratch (scripts/image.sh, Dockerfile).
KEY   ?=
SPEC  ?= testdata/pneumonia_spec.json
IMAGE ?=
# The image's binary leaves out the report (gonum/plot), Gorgonia's graph
# machine (the same layer calls run directly, bit for bit the same) and
# gRPC's tracing: 13.7 MB instead of 31.7 MB.
export IMAGE_TAGS := noreport nogorgonia grpcnotrace
image:
	./scripts/image.sh "$(KEY)" "$(SPEC)" $(IMAGE)

# Unit tests, command-line script tests, the race detector, then each fuzz
# target briefly.
test:
	$(GO) vet ./...
	$(GO) test ./...
	GOEXPERIMENT= $(GO) test ./model/...
	$(GO) test -tags "$(IMAGE_TAGS)" -run 'Graph|Train|Predict|Evaluate' ./model
	$(GO) test -race ./persistor/... ./model/... ./flare/...
	$(MAKE) --no-print-directory fuzz

# The command's end-to-end tests under the race detector (≈ 25 min on 2
# cores: many servers and clients in one process); CI runs it. The image
# test is left out: its work runs in containers, and make test runs it.
race:
	$(GO) test -race -timeout 45m -skip TestImageBuildsAndRunsAsFCP ./worker

fuzz:
	GO=$(GO) ./scripts/fuzz.sh

# Installs the Python peers with apt when they are missing.
python-peers:
	@if $(PYTHON) -c 'import torch, torchvision, cryptography, numpy, msgpack, grpc, google.protobuf, psutil, yaml, requests, pydicom' 2>/dev/null && [ -e /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 ] && command -v age gdcmconv protoc >/dev/null; then \
		echo "python peers: present ($$($(PYTHON) -c 'import torch, cryptography; print("torch", torch.__version__, "cryptography", cryptography.__version__)'))"; \
	else \
		echo "python peers: installing $(PY_DEBS) with apt-get"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(PY_DEBS) >/dev/null; \
		$(PYTHON) -c 'import torch, cryptography, numpy'; \
	fi

# A Debian 13 root with torch 2.6, safetensors and the packages NVFlare 2.8 imports, where the
# interop checks run NVFlare 2.8.1's PyTorch server (testdata/interop/nvflare-pt-server.sh).
# Made once (≈ 3 min, 1.5 GB; root or passwordless sudo), then only checked. The tests find it
# through FLAREGO_DEBIAN13_ROOT; missing, they fail under CI=true and skip elsewhere.
FLAREGO_DEBIAN13_ROOT ?= $(HOME)/.cache/flarego/debian13
export FLAREGO_DEBIAN13_ROOT
debian13-root:
	./scripts/debian13-root.sh $(FLAREGO_DEBIAN13_ROOT)

# Cross-checks against the real peers: Python's cryptography and torch 1.13, and NVFlare 2.8.1
# with torch 2.6 in the Debian 13 root.
interop: python-peers debian13-root
	PYTHON=$(PYTHON) $(GO) test -tags interop -count=1 -v -run Interop ./persistor ./model/... ./internal/... ./flare/... ./worker

# hello-numpy-sag on a real NVFlare main (2.9.0dev) server with two flarego
# sites, in a Debian forky root (NVFlare main needs cryptography >= 42),
# made at FORKY_ROOT with debootstrap the first time and reused. Needs root
# and, the first time, the Debian mirror; ≈ 40 s once the root exists.
# Not part of interop or CI (too slow).
FORKY_ROOT ?= $(HOME)/.cache/flarego/forky
interop-nvflare-main: build
	FORKY_ROOT=$(FORKY_ROOT) BIN=$(CURDIR)/$(BIN) ./scripts/interop-nvflare-main.sh

# The job NVFlare 2.8.1's Recipe API exports for hello-numpy (FedAvg,
# sites running client.py through the Client API) with two real NVFlare
# 2.8.1 clients and flare_api on flarego server, in a Debian trixie root
# (RECIPE_ROOT, made once). Needs root, NVFLARE_MIRROR (a bare git copy of
# NVIDIA/NVFlare with the tag 2.8.1: the release tarball has no examples)
# and PYHOCON_MIRROR (a bare git copy of chimpler/pyhocon, which Debian
# does not package). Not part of interop or CI.
RECIPE_ROOT ?= $(HOME)/.cache/flarego/nvf-trixie
interop-nvflare-recipe: build
	RECIPE_ROOT=$(RECIPE_ROOT) BIN=$(CURDIR)/$(BIN) ./scripts/interop-nvflare-recipe.sh

# Benchmarks: the kernels and layers (go test -bench), then the persistor and the
# model side by side with the peers in fresh processes: torch 1.13 (Debian 12), and
# torch 2.6 and onnxruntime 1.21 from the Debian 13 root (running there needs root).
bench: build python-peers debian13-root
	$(GO) test -run '^$$' -bench . -benchtime 5x ./persistor ./model ./model/internal/kernels
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
		--go-grpc_out=proto --go-grpc_opt=paths=source_relative proto/fedlearn/federated.proto proto/admin/admin.proto \
		proto/streamer/streamer.proto

lint:
	@test -z "$$(gofmt -l .)" || { gofmt -l .; echo "gofmt: files above need formatting"; exit 1; }
	$(GO) vet ./...
	$(GO) vet -tags interop ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

clean:
	rm -rf bin
