#!/usr/bin/env bash
# capture.sh NVFLARE_SRC OUT — records two runs of hello-numpy-sag on a real
# NVFlare 2.0.5 server (its public source, tag 2.0.5, on PYTHONPATH; Debian's
# python3-grpcio, python3-protobuf, python3-numpy, python3-psutil,
# python3-yaml) with flarego's site-1 and site-2 as its clients: run 1, then
# set_run_number 2, deploy_app and start_app again. Every unary gRPC call the
# server answers is written to OUT (record_server.py). One round per run.
set -euo pipefail
PY=${PYTHON:-/usr/bin/python3}  # Debian's, with the python3-* packages
SRC=$(realpath "${1:?usage: capture.sh NVFLARE_SRC OUT}")
OUT=$(realpath -m "${2:?usage: capture.sh NVFLARE_SRC OUT}")
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
W=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill -- -"$p" 2>/dev/null || true; done' EXIT
cp -r "$SRC/nvflare/poc/server" "$W/server"
mkdir -p "$W/server/transfer" "$W/admin/transfer" "$W/clients"
cp -r "$SRC/examples/hello-numpy-sag" "$W/admin/transfer/"
"$PY" - "$W/admin/transfer/hello-numpy-sag/config/config_fed_server.json" <<'PY'
import json, sys
p = sys.argv[1]; c = json.load(open(p))
args = c["workflows"][0]["args"]; args["num_rounds"] = 1; args["wait_time_after_min_received"] = 1
json.dump(c, open(p, "w"), indent=2)
PY
cd "$W/server"
PYTHONPATH="$SRC" setsid "$PY" -u "$HERE/record_server.py" "$OUT" -m "$W/server" -s fed_server.json \
  --set secure_train=false config_folder=config >"$W/server.log" 2>&1 &
pids+=($!)
for _ in $(seq 60); do (echo >/dev/tcp/127.0.0.1/8003) 2>/dev/null && break; sleep 1; done
FLAREGO_CAPTURE_TARGET=localhost:8002 FLAREGO_CAPTURE_WS="$W/clients" GOEXPERIMENT=simd setsid bash -c \
  'cd "$0" && exec go test -tags capture -count=1 -v -run TestCaptureClients ./flare/client' "$REPO" >"$W/clients.log" 2>&1 &
clients=$!
pids+=($clients)
PYTHONPATH="$SRC" "$PY" -u "$HERE/drive_admin.py" localhost 8003 "$W/admin/transfer" hello-numpy-sag | tee "$W/admin.log"
wait $clients || { tail -30 "$W/clients.log"; exit 1; }
sleep 2
grep -h "run_number\|run number\|end run\|Return task" "$W/server.log" | cut -c1-200 | tail -40
echo "logs in $W"
