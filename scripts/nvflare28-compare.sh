#!/usr/bin/env bash
# nvflare28-compare.sh — hello-numpy-sag on the real NVFlare 2.8.1 server, once with NVFlare's own
# clients and once with flarego sites, side by side: site start to registered, per-round overhead
# (the server's job log: task assigned to a site -> its result received), job time, peak RSS of each
# site (NVFlare's: its parent and job processes together), and the final model.
#
# Usage: scripts/nvflare28-compare.sh [SHARED]   (SHARED: the folder holding tools/ and peers/,
#        default ../shared beside the repository). Takes about 2 minutes; run it on an idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${1:-../shared}
SCRIPT=$SHARED/tools/nvflare-peer-run.sh
TGZ=$SHARED/peers/nvflare-2.8.1.tgz
[[ -f $SCRIPT && -f $TGZ ]] || { echo "no NVFlare peer in $SHARED (tools/nvflare-peer-run.sh, peers/nvflare-2.8.1.tgz)" >&2; exit 1; }
OUT=$(mktemp -d /tmp/flarego-nvflare28.XXXXXX)
CGO_ENABLED=0 go build -trimpath -o "$OUT/bin/flarego" ./worker

# rss SITE WORKDIR: samples the summed RSS (KiB) of the site's processes every 100 ms until the run
# ends, keeping the peak in $OUT/rss-SITE.
sample() {
  local tag=$1 peak=0
  while [[ ! -f $OUT/done-$tag ]]; do
    for s in site-1 site-2; do
      local kb
      kb=$(ps -eo rss=,args= | awk -v s="uid=$s" -v t="$tag" 'index($0, s) && (t == "flarego" ? index($0, "flarego client") : index($0, "nvflare")) {k += $1} END {print k + 0}')
      local f=$OUT/rss-$tag-$s
      [[ -f $f ]] || echo 0 > "$f"
      (( kb > $(cat "$f") )) && echo "$kb" > "$f"
    done
    sleep 0.1
  done
}

run() { # run TAG [CLIENT_CMD]
  local tag=$1 port=$2; shift 2
  local work=$OUT/$tag
  sample "$tag" & local sp=$!
  env CAPTURE=0 SIMULATOR=0 JOB_TIMEOUT=180 PORT=$port "$@" bash "$SCRIPT" 2.8.1 "$work" "$TGZ" > "$OUT/$tag.log" 2>&1 || true
  touch "$OUT/done-$tag"; wait $sp
  local job
  job=$(ls "$work/store/jobs-storage" | head -1)
  /usr/bin/python3 - "$tag" "$work/store/jobs-storage/$job/workspace" "$OUT/$tag.log" "$OUT" <<'EOF'
import re, sys, zipfile, datetime, statistics
tag, ws, log, out = sys.argv[1:]
text = zipfile.ZipFile(ws).read("log.txt").decode()
t = lambda line: datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
assigned, over = {}, []
for line in text.splitlines():
    m = re.search(r"peer=(site-\d).*assigned task to client", line)
    if m: assigned[m.group(1)] = t(line)
    m = re.search(r"peer=(site-\d).*got result from client", line)
    if m and m.group(1) in assigned: over.append((t(line) - assigned.pop(m.group(1))).total_seconds() * 1000)
starts = [t(l) for l in text.splitlines() if "Round 0 started" in l]
ends = [t(l) for l in text.splitlines() if "Finished ScatterAndGather Training" in l]
runlog = open(log).read()
reg = re.search(r"clients start -> registered:\s+(\S+ s)", runlog)
model = re.search(r"final global model \(server job workspace\): (.*)", runlog)
rss = [int(open(f"{out}/rss-{tag}-{s}").read()) // 1024 for s in ("site-1", "site-2")]
print(f"{tag:8} registered (script, 0.5 s polls) {reg.group(1) if reg else '?':>7} | round overhead median {statistics.median(over):6.1f} ms"
      f" (n={len(over)}) | rounds {(ends[0] - starts[0]).total_seconds() if starts and ends else float('nan'):5.2f} s"
      f" | peak RSS per site {rss[0]} / {rss[1]} MiB | model {model.group(1).strip() if model else '?'}")
EOF
}

run nvflare 18151
run flarego 18152 CLIENT_CMD="$OUT/bin/flarego client -m {kit} -s fed_client.json --set secure_train=true uid={site} org=nvidia config_folder=config"
grep -h "registered with" "$OUT/flarego/logs/site-1.log" | head -1
echo "logs: $OUT"
