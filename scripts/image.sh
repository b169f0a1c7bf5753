#!/usr/bin/env bash
# Builds the FCP container image without pulling anything:
#   scripts/image.sh KEY [SPEC] [IMAGE]      (make image KEY=… [SPEC=…] [IMAGE=…])
# KEY   the job's Fernet key: a key file as Fernet.generate_key() writes it, or
#       FCP's secret_run_params.json ({"key": "..."}). It encrypts the
#       architecture and is not put in the image.
# SPEC  the model architecture (JSON; default testdata/pneumonia_spec.json).
# IMAGE the image name (default flarego:VERSION, VERSION from git describe).
# The static binary is built with the local Go; the build context is staged
# in out/image/ (binary, job configs, encrypted architecture) so that nothing
# else can reach the image. Prints the image's name and size.
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "image: $*" >&2; exit 1; }

KEY=${1:-}; SPEC=${2:-testdata/pneumonia_spec.json}
[[ -n "$KEY" ]] || fail "no key: make image KEY=FILE (a Fernet key file or FCP's secret_run_params.json; make one with: flarego keygen FILE)"
[[ -f "$KEY" ]] || fail "key file $KEY does not exist"
[[ -f "$SPEC" ]] || fail "architecture $SPEC does not exist (SPEC=FILE names the model spec JSON)"
command -v docker >/dev/null || fail "docker is not installed"
docker info >/dev/null 2>&1 || fail "the Docker engine does not answer (docker info)"
VERSION=$(git describe --tags --always --dirty 2>/dev/null || echo dev)
IMAGE=${3:-flarego:$VERSION}

ctx=out/image
rm -rf "$ctx"; mkdir -p "$ctx/job/pneumonia/custom"
echo "== building the static binary (CGO_ENABLED=0, GOEXPERIMENT=${GOEXPERIMENT-simd}, -tags ${IMAGE_TAGS-noreport nogorgonia grpcnotrace})"
CGO_ENABLED=0 GOEXPERIMENT=${GOEXPERIMENT-simd} go build -trimpath -tags "${IMAGE_TAGS-noreport nogorgonia grpcnotrace}" -ldflags "-s -w" -o "$ctx/flarego" ./worker
echo "== checking the architecture and encrypting it with $KEY"
"$ctx/flarego" encrypt "$SPEC" "$KEY" "$ctx/job/pneumonia/custom/network.json.enc" \
  || fail "could not encrypt $SPEC with $KEY (see above)"
cp -r job/pneumonia/config "$ctx/job/pneumonia/config"
cp Dockerfile "$ctx/Dockerfile"
echo "== docker build -t $IMAGE"
docker build -q --build-arg VERSION="$VERSION" -t "$IMAGE" "$ctx" >/dev/null
size=$(docker image inspect --format '{{.Size}}' "$IMAGE")
echo "built $IMAGE ($(( (size + 524287) / 1048576 )) MB, $size bytes)"
