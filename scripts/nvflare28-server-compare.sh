#!/usr/bin/env bash
# nvflare28-server-compare.sh — hello-numpy-sag (3 rounds) with two real NVFlare 2.8.1 clients and
# NVFlare's own flare_api submitting, once on NVFlare 2.8.1's server and once on flarego server,
# side by side: the job's run time (its meta's duration) and submit to FINISHED seen, peak RSS of
# the server (NVFlare's: its parent and its job process together), the final model; then flarego
# server's start to ready (process start to the port accepting, polled every 5 ms).
#
# Usage: scripts/nvflare28-server-compare.sh [SHARED]   (SHARED: the folder holding tools/ and
#        peers/, default ../shared beside the repository). About a minute; run it on an idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${1:-../shared}
SCRIPT=$SHARED/tools/nvflare-peer-run.sh
TGZ=$SHARED/peers/nvflare-2.8.1.tgz
[[ -f $SCRIPT && -f $TGZ ]] || { echo "no NVFlare peer in $SHARED (tools/nvflare-peer-run.sh, peers/nvflare-2.8.1.tgz)" >&2; exit 1; }
OUT=$(mktemp -d /tmp/flarego-nvflare28-server.XXXXXX)
CGO_ENABLED=0 go build -trimpath -o "$OUT/bin/flarego" ./worker
BIN=$OUT/bin/flarego

# sample TAG: the peak summed RSS (KiB) of the server's processes, every 100 ms, until the run ends.
sample() {
  local tag=$1 peak=0 kb
  while [[ ! -f $OUT/done-$tag ]]; do
    kb=$(ps -eo rss=,args= | awk -v t="$tag" '(t == "flarego" ? index($0, "flarego server") : index($0, "nvflare.private.fed.app.server")) && !index($0, "awk") {k += $1} END {print k + 0}')
    (( kb > peak )) && peak=$kb
    echo "$peak" > "$OUT/rss-$tag"
    sleep 0.1
  done
}

run() { # run TAG PORT [ENV...]
  local tag=$1 port=$2; shift 2
  sample "$tag" & local sp=$!
  env CAPTURE=0 SIMULATOR=0 JOB_TIMEOUT=180 PORT=$port "$@" bash "$SCRIPT" 2.8.1 "$OUT/$tag" "$TGZ" > "$OUT/$tag.log" 2>&1 || true
  touch "$OUT/done-$tag"; wait $sp
}

run nvflare 18151
run flarego 18152 SERVER_CMD="$BIN server -m {kit} -s fed_server.json --set secure_train=true config_folder=config"

# start to ready of flarego server, on the kit of the last run (its job store now holds one job)
kit=$(ls -d "$OUT"/flarego/ws/*/prod_00/server1)
port=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["servers"][0]["service"]["target"].split(":")[1])' "$kit/startup/fed_server.json")
ready=()
for _ in 1 2 3 4 5; do
  t0=$(date +%s%N)
  (cd "$kit" && exec "$BIN" server -m . -s fed_server.json --set secure_train=true config_folder=config) > "$OUT/ready.log" 2>&1 &
  pid=$!
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do sleep 0.005; done
  ready+=($(( ($(date +%s%N) - t0) / 1000000 )))
  kill -TERM $pid; wait $pid 2>/dev/null || true
done

python3 - "$OUT" "${ready[*]}" <<'EOF'
import json, re, sys
out, ready = sys.argv[1], sorted(int(x) for x in sys.argv[2].split())
rows = {}
for tag in ("nvflare", "flarego"):
    log = open(f"{out}/{tag}.log").read()
    m = re.search(r"job result: (\{.*\}) \(submit", log)
    res = json.loads(m.group(1)) if m else {}
    model = re.search(r"final global model \(server job workspace\): (.*)", log)
    rss = int(open(f"{out}/rss-{tag}").read()) // 1024
    rows[tag] = (res, model.group(1).strip() if model else "?", rss)
    print(f"{tag:8} | status {res.get('status', '?')} | job run {res.get('meta_duration', '?')} | submit to FINISHED seen "
          f"{res.get('submit_to_finished_seen_s', '?')} s | server peak RSS {rss} MiB | model {rows[tag][1]}")
n, f = rows["nvflare"][2], rows["flarego"][2]
if n and f:
    print(f"server peak RSS: flarego {f} MiB = {f / n:.2f} x NVFlare's {n} MiB")
print(f"flarego server start to ready: median {ready[len(ready) // 2]} ms (runs: {ready})")
EOF
echo "logs: $OUT"
