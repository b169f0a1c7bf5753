#!/usr/bin/env bash
# nvflare-pt-server.sh ROOT WORKDIR PORT clear|mtls — the real NVFlare 2.8.1 server, with its
# PyTorch components, runs the pneumonia job (testdata/interop/nvflare-pt-job) for two sites.
#
#   ROOT     the Debian 13 root of `make debian13-root` (scripts/debian13-root.sh): torch 2.6 and
#            the Debian packages NVFlare imports. The server, provisioning and the admin API run in
#            it (chroot, in their own PID namespace: everything started there ends with the script).
#   WORKDIR  a folder for the results (made if missing). Left there:
#              kits/SITE/        the sites' provisioned startup kits (CLIENT_CMD runs in them)
#              job/              the job as submitted
#              FL_global_model.pt  the server's saved global model (PTFileModelPersistor, after
#                                the last round): the server writes it in its kit's
#                                <job id>/app_server/ and, when the job ends, zips that run folder
#                                into its job store (<store>/jobs-storage/<job id>/workspace) and
#                                removes it; this is copied from there
#              server-workspace.zip  that zip (the server's run folder, its logs and the app)
#              result.json       job id, status, timings; "error" says what failed
#              submissions/      with the stand-in trainer: round-R/SITE.npz + .json, what each
#                                site sent (for nvflare_pt_compare.py)
#              logs/             root.log (this run in the root), provision.log, server.log
#                                (stdout), server-log.txt, server-job-log.txt, admin.log, SITE.log,
#                                and with NVFlare's clients SITE-job-log.txt
#   PORT     the server's fed_learn/admin port on localhost
#   clear|mtls  connection_security of every participant
#
# Environment:
#   CLIENT_CMD        the program for each site, run on this machine (not in the root) in
#                     WORKDIR/kits/SITE with {kit} and {site} replaced, e.g.
#                     'bin/flarego client -m {kit} -s fed_client.json --set uid={site}'. Unset:
#                     NVFlare's own clients run in the root, with the job's trainer replaced by
#                     testdata/interop/nvflare-pt-standin/standin_trainer.py (random weights of the
#                     model's shapes; it records what it sent under WORKDIR/submissions).
#   NVFLARE_TGZ       NVFlare 2.8.1's source tarball (default $FLAREGO_NVFLARE_TGZ, else
#                     shared/peers/nvflare-2.8.1.tgz beside or above the repository)
#   JOB               the job folder (default testdata/interop/nvflare-pt-job). app*/custom/network.json
#                     is added from testdata/pneumonia_spec.json when there is no network.json(.enc).
#   SITES             site names (default "site-1 site-2")
#   NUM_ROUNDS        overrides the job's ScatterAndGather num_rounds
#   JOB_TIMEOUT=600   seconds for the job; REGISTER_TIMEOUT=120 seconds for the sites to join
#   KEEP=1            keep the run folder in ROOT/tmp (the script says where)
# Needs root: run as root or with passwordless sudo (then the results are chowned to the caller).
# Exit status 0 when the job finished FINISHED:COMPLETED and the model was copied out; else 1 with
# a line "nvflare-pt-server: FAILED: ..." naming what went wrong. SIGTERM or SIGINT stops it and
# everything it started.
set -u -o pipefail
ME=$(readlink -f "${BASH_SOURCE[0]}")
HERE=$(dirname "$ME")

log() { echo "nvflare-pt-server $(date +%H:%M:%S): $*"; }
die() { log "FAILED: $*"; exit 1; }

# ------------------------------------------------------------------ inside the root
if [[ "${1:-}" == --inner ]]; then
  IN=${2:?}
  cd "$IN" || exit 1
  export PYTHONPATH="$IN/src" PYTHONDONTWRITEBYTECODE=1
  OUT="$IN/out"; LOGS="$OUT/logs"; PIDS="$IN/pids"; STATE="$IN/state"
  mkdir -p "$LOGS" "$PIDS" "$STATE"
  ADMIN=admin@flarego.org
  note() { # the outcome for result.json when the admin driver did not write one
    python3 - "$OUT/result.json" "$1" <<'EOF'
import json, os, sys
p = sys.argv[1]
r = json.load(open(p)) if os.path.exists(p) else {}
r.setdefault("error", sys.argv[2])
json.dump(r, open(p, "w"), indent=1)
EOF
  }
  fail() { log "FAILED: $*"; note "$*"; exit 1; }
  stop_all() {
    for f in "$PIDS"/*.pid; do
      [[ -f "$f" ]] || continue
      kill -TERM -- "-$(cat "$f")" 2>/dev/null
    done
    for _ in $(seq 20); do
      alive=0
      for f in "$PIDS"/*.pid; do [[ -f "$f" ]] && kill -0 -- "-$(cat "$f")" 2>/dev/null && alive=1; done
      [[ $alive == 0 ]] && break
      sleep 0.5
    done
    for f in "$PIDS"/*.pid; do [[ -f "$f" ]] && kill -KILL -- "-$(cat "$f")" 2>/dev/null; rm -f "$f"; done
  }
  finish() {
    rc=$?
    trap - EXIT TERM INT
    stop_all
    # everything the caller reads is in out/, owned by the caller
    [[ -n "${CALLER:-}" ]] && chown -R "$CALLER" "$OUT" 2>/dev/null
    exit $rc
  }
  trap finish EXIT
  trap 'note "stopped by a signal"; exit 143' TERM INT

  python3 -c 'import nvflare, torch, nvflare.app_opt.pt.file_model_persistor; print("nvflare", nvflare.__version__, "torch", torch.__version__)' \
    >"$LOGS/import.log" 2>&1 || { cat "$LOGS/import.log"; fail "NVFlare's PyTorch components do not import in the root (logs/import.log)"; }
  log "$(tail -1 "$LOGS/import.log")"

  # the job: a copy with the architecture file, and the stand-in trainer when NVFlare's clients run it
  JOB="$IN/job/$(basename "$JOB_NAME")"
  python3 - "$IN/job-src" "$JOB" "$IN/pneumonia_spec.json" "${NVF_CLIENTS:-0}" "$IN/standin_trainer.py" \
    "$OUT/submissions" "${NUM_ROUNDS:-}" <<'EOF' >"$LOGS/stage.log" 2>&1 || { cat "$LOGS/stage.log"; fail "cannot stage the job"; }
import json, os, shutil, sys
src, dst, spec, standin, trainer, dump, rounds = sys.argv[1:8]
shutil.copytree(src, dst)
meta = json.load(open(os.path.join(dst, "meta.json")))
for app in meta.get("deploy_map", {}):
    custom = os.path.join(dst, app, "custom")
    os.makedirs(custom, exist_ok=True)
    if not any(os.path.exists(os.path.join(custom, n)) for n in ("network.json", "network.json.enc")):
        shutil.copy(spec, os.path.join(custom, "network.json"))
    cfg_dir = os.path.join(dst, app, "config")
    if standin == "1" and os.path.exists(os.path.join(cfg_dir, "config_fed_client.json")):
        shutil.copy(trainer, custom)
        p = os.path.join(cfg_dir, "config_fed_client.json")
        c = json.load(open(p))
        for e in c.get("executors", []):
            e["executor"] = {"path": "standin_trainer.StandinTrainer", "args": {"dump_dir": dump}}
        json.dump(c, open(p, "w"), indent=2)
    p = os.path.join(cfg_dir, "config_fed_server.json")
    if rounds and os.path.exists(p):
        c = json.load(open(p))
        for w in c.get("workflows", []):
            if "num_rounds" in w.get("args", {}):
                w["args"]["num_rounds"] = int(rounds)
        json.dump(c, open(p, "w"), indent=2)
print("staged", dst)
EOF
  cp -a "$JOB" "$OUT/job"

  # provision: server1, the sites, one admin, on localhost:PORT
  {
    echo "api_version: 3"
    echo "name: flarego_pt"
    echo "description: the pneumonia job on NVFlare's PyTorch server (nvflare-pt-server.sh)"
    echo "participants:"
    echo "  - {name: server1, type: server, org: flarego, fed_learn_port: $PORT, default_host: localhost, connection_security: $CONN_SEC}"
    for s in $SITES; do echo "  - {name: $s, type: client, org: flarego, connection_security: $CONN_SEC}"; done
    echo "  - {name: $ADMIN, type: admin, org: flarego, role: project_admin, connection_security: $CONN_SEC}"
    echo "builders:"
    echo "  - path: nvflare.lighter.impl.workspace.WorkspaceBuilder"
    echo "    args: {template_file: [master_template.yml]}"
    echo "  - path: nvflare.lighter.impl.static_file.StaticFileBuilder"
    echo "    args: {config_folder: config, scheme: grpc}"
    echo "  - path: nvflare.lighter.impl.cert.CertBuilder"
    echo "  - path: nvflare.lighter.impl.signature.SignatureBuilder"
  } >"$IN/project.yml"
  python3 -m nvflare.lighter.provision -p "$IN/project.yml" -w "$IN/ws" --force >"$LOGS/provision.log" 2>&1 ||
    { tail -20 "$LOGS/provision.log"; fail "provisioning failed (logs/provision.log)"; }
  KIT=$(ls -d "$IN"/ws/flarego_pt/prod_* 2>/dev/null | sort -V | tail -1)
  [[ -d "$KIT/server1" ]] || fail "provisioning made no server kit"
  # job and snapshot storage inside the run folder, not the shared /tmp/nvflare
  sed "s#/tmp/nvflare/#$IN/store/#g" "$KIT/server1/local/resources.json.default" >"$KIT/server1/local/resources.json"
  mkdir -p "$OUT/kits"
  for s in $SITES; do cp -a "$KIT/$s" "$OUT/kits/$s"; done
  [[ -n "${CALLER:-}" ]] && chown -R "$CALLER" "$OUT"
  touch "$STATE/provisioned"
  stamp() { echo "$1 $(date +%s.%N)" >>"$STATE/times"; }

  stamp server_start
  setsid bash "$KIT/server1/startup/sub_start.sh" --once >"$LOGS/server.log" 2>&1 </dev/null &
  echo $! >"$PIDS/server.pid"
  up=0
  for _ in $(seq 240); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && { up=1; break; }
    kill -0 "$(cat "$PIDS/server.pid")" 2>/dev/null || break
    sleep 0.25
  done
  [[ $up == 1 ]] || { tail -30 "$LOGS/server.log"; fail "the server did not listen on port $PORT (logs/server.log)"; }
  stamp server_ready
  log "server listening on localhost:$PORT ($CONN_SEC)"
  touch "$STATE/server-ready"

  if [[ "${NVF_CLIENTS:-0}" == 1 ]]; then
    for s in $SITES; do
      setsid bash "$KIT/$s/startup/sub_start.sh" --once >"$LOGS/$s.log" 2>&1 </dev/null &
      echo $! >"$PIDS/$s.pid"
    done
    log "NVFlare clients started: $SITES (stand-in trainer)"
  fi

  # in the background, so that a signal is handled at once (bash runs traps between commands)
  setsid python3 "$IN/nvflare_pt_admin.py" "$KIT/$ADMIN" "$ADMIN" "$JOB" "$(echo $SITES | tr ' ' ,)" "$OUT/result.json" \
    --job-timeout "$JOB_TIMEOUT" --register-timeout "$REGISTER_TIMEOUT" >"$LOGS/admin.log" 2>&1 </dev/null &
  echo $! >"$PIDS/admin.pid"
  wait "$(cat "$PIDS/admin.pid")"
  arc=$?
  rm -f "$PIDS/admin.pid"
  stamp job_done
  touch "$STATE/job-done"
  JOBID=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("job_id",""))' "$OUT/result.json" 2>/dev/null)
  # the server's logs, then the model: <kit>/<job id>/app_server/FL_global_model.pt while the run
  # folder exists, else the job's workspace zip in the job store
  cp "$KIT/server1/log.txt" "$LOGS/server-log.txt" 2>/dev/null
  if [[ -n "$JOBID" ]]; then
    cp "$KIT/server1/$JOBID/log.txt" "$LOGS/server-job-log.txt" 2>/dev/null
    found=""
    for _ in $(seq 40); do
      if [[ -f "$KIT/server1/$JOBID/app_server/FL_global_model.pt" ]]; then
        cp "$KIT/server1/$JOBID/app_server/FL_global_model.pt" "$OUT/FL_global_model.pt" && found="$KIT/server1/$JOBID/app_server"
      elif [[ -f "$IN/store/jobs-storage/$JOBID/workspace" ]]; then
        # the server zips the job's run folder into the job store when the job ends
        python3 - "$IN/store/jobs-storage/$JOBID/workspace" "$OUT" <<'EOF' 2>/dev/null && found="the job store's workspace zip"
import os, shutil, sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
names = z.namelist()
if "log.txt" in names:
    open(os.path.join(sys.argv[2], "logs", "server-job-log.txt"), "wb").write(z.read("log.txt"))
open(os.path.join(sys.argv[2], "FL_global_model.pt"), "wb").write(z.read("app_server/FL_global_model.pt"))
shutil.copy(sys.argv[1], os.path.join(sys.argv[2], "server-workspace.zip"))
EOF
      fi
      [[ -n "$found" ]] && break
      sleep 0.5
    done
    [[ -n "$found" ]] && log "global model copied from $found" && stamp model_copied
    for s in $SITES; do cp "$KIT/$s/$JOBID/log.txt" "$LOGS/$s-job-log.txt" 2>/dev/null; done
  fi
  # after "shutdown all", give the processes a moment to end on their own
  for _ in $(seq 30); do
    alive=0
    for f in "$PIDS"/*.pid; do [[ -f "$f" ]] && kill -0 "$(cat "$f")" 2>/dev/null && alive=1; done
    [[ $alive == 0 ]] && break
    sleep 0.5
  done
  stamp stopped
  python3 - "$STATE/times" "$OUT/result.json" <<'EOF'
import json, os, sys
t = dict((k, float(v)) for k, v in (l.split() for l in open(sys.argv[1])))
r = json.load(open(sys.argv[2])) if os.path.exists(sys.argv[2]) else {}
d = lambda a, b: round(t[b] - t[a], 3) if a in t and b in t else None
r["server_start_s"] = d("server_start", "server_ready")
r["server_ready_to_job_done_s"] = d("server_ready", "job_done")
r["stop_s"] = d("job_done", "stopped")
json.dump(r, open(sys.argv[2], "w"), indent=1)
EOF
  if [[ $arc == 0 && "${NVF_CLIENTS:-0}" == 1 && -s "$OUT/FL_global_model.pt" ]]; then
    # the stand-in recorded what the sites sent: the saved model must be the last round's
    # NUM_STEPS-weighted mean
    last=$(ls -d "$OUT"/submissions/round-* 2>/dev/null | sort -t- -k2 -n | tail -1)
    [[ -n "$last" ]] || fail "the stand-in trainer recorded no submissions"
    python3 "$IN/nvflare_pt_compare.py" "$OUT/FL_global_model.pt" "$last" --tol 1e-6 >"$LOGS/compare.log" 2>&1
    crc=$?
    python3 - "$OUT/result.json" "$LOGS/compare.log" "$(basename "$last")" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
lines = open(sys.argv[2]).read().splitlines()
c = next((json.loads(l) for l in lines if l.startswith("{")), {"error": " ".join(lines)})
c["round"] = sys.argv[3]
r["standin_check"] = c
json.dump(r, open(sys.argv[1], "w"), indent=1)
EOF
    log "stand-in check ($(basename "$last")): $(head -c 300 "$LOGS/compare.log")"
    [[ $crc == 0 ]] || fail "the saved model is not the NUM_STEPS-weighted mean of the stand-in's last submissions (logs/compare.log)"
  fi
  [[ $arc == 0 ]] || fail "the job did not complete: $(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r.get("error") or r.get("status"))' "$OUT/result.json" 2>/dev/null) (logs/admin.log, logs/server-log.txt)"
  [[ -s "$OUT/FL_global_model.pt" ]] || fail "the job completed but no FL_global_model.pt was found for job $JOBID"
  exit 0
fi

# ------------------------------------------------------------------ on this machine
[[ $# == 4 ]] || die "usage: nvflare-pt-server.sh ROOT WORKDIR PORT clear|mtls (settings go in the environment)"
ROOT=${1:?usage: nvflare-pt-server.sh ROOT WORKDIR PORT clear|mtls}
WORK=${2:?usage: nvflare-pt-server.sh ROOT WORKDIR PORT clear|mtls}
PORT=${3:?usage: nvflare-pt-server.sh ROOT WORKDIR PORT clear|mtls}
CONN_SEC=${4:?usage: nvflare-pt-server.sh ROOT WORKDIR PORT clear|mtls}
[[ "$CONN_SEC" == clear || "$CONN_SEC" == mtls ]] || die "connection security must be clear or mtls, not '$CONN_SEC'"
[[ "$PORT" =~ ^[0-9]+$ && "$PORT" -ge 1 && "$PORT" -le 65535 ]] || die "port '$PORT' is not a TCP port"
ROOT=$(readlink -f "$ROOT")
[[ -f "$ROOT/.flarego-debian13" && -x "$ROOT/usr/bin/python3" ]] || die "$ROOT is not a complete Debian 13 root (make debian13-root)"
REPO=$(cd "$HERE/../.." && pwd)
JOB=${JOB:-$HERE/nvflare-pt-job}
[[ -f "$JOB/meta.json" ]] || die "job folder $JOB has no meta.json"
SITES=${SITES:-site-1 site-2}
JOB_TIMEOUT=${JOB_TIMEOUT:-600}
REGISTER_TIMEOUT=${REGISTER_TIMEOUT:-120}
TGZ=${NVFLARE_TGZ:-${FLAREGO_NVFLARE_TGZ:-}}
if [[ -z "$TGZ" ]]; then
  for d in "$REPO" "$REPO/.." "$REPO/../.." "$REPO/../../.."; do
    [[ -f "$d/shared/peers/nvflare-2.8.1.tgz" ]] && { TGZ=$(readlink -f "$d/shared/peers/nvflare-2.8.1.tgz"); break; }
  done
fi
[[ -n "$TGZ" && -f "$TGZ" ]] || die "no NVFlare 2.8.1 tarball (NVFLARE_TGZ, FLAREGO_NVFLARE_TGZ or shared/peers/nvflare-2.8.1.tgz)"
SUDO=
[[ "$(id -u)" == 0 ]] || { SUDO="sudo -n"; $SUDO true 2>/dev/null || die "needs root or passwordless sudo (chroot, unshare)"; }
if command -v ss >/dev/null && ss -ltn | awk '{print $4}' | grep -qE "[:.]$PORT\$"; then die "port $PORT is already in use"; fi
mkdir -p "$WORK" || die "cannot make $WORK"
WORK=$(cd "$WORK" && pwd)
rm -rf "$WORK/kits" "$WORK/job" "$WORK/logs" "$WORK/submissions" "$WORK/FL_global_model.pt" "$WORK/result.json" "$WORK/server-workspace.zip"
mkdir -p "$WORK/logs"
load=$(cut -d' ' -f1 /proc/loadavg)
log "root $ROOT, work $WORK, port $PORT, $CONN_SEC, sites: $SITES, clients: ${CLIENT_CMD:-NVFlare clients with the stand-in trainer} (load $load)"

# the run folder, inside the root's /tmp (the root sees only its own tree)
IN_HOST=$(mktemp -d "$ROOT/tmp/flarego-pt.XXXXXX") || die "cannot make a run folder in $ROOT/tmp"
chmod 755 "$IN_HOST"
IN=${IN_HOST#"$ROOT"}
mkdir -p "$IN_HOST/src" "$IN_HOST/home" "$IN_HOST/tmp"  # HOME and TMPDIR there: NVFlare leaves files in both
tar -xzf "$TGZ" -C "$IN_HOST/src" || die "cannot unpack $TGZ"
[[ -d "$IN_HOST/src/nvflare" ]] || die "$TGZ holds no nvflare/"
cp -a "$JOB" "$IN_HOST/job-src" || die "cannot copy $JOB"
cp "$REPO/testdata/pneumonia_spec.json" "$HERE/nvflare-pt-standin/standin_trainer.py" "$HERE/nvflare_pt_admin.py" \
  "$HERE/nvflare_pt_compare.py" "$ME" "$IN_HOST/" ||
  die "cannot copy the job's helpers into the root"

HOSTPIDS="$WORK/logs/.pids"; mkdir -p "$HOSTPIDS"
INNER_PID=""  # sudo or unshare
NS_INIT=""    # the inner script: the first process of the PID namespace
children_of() { # the PIDs whose parent is $1, from /proc/PID/stat ("pid (comm) state ppid ...")
  local f line rest
  for f in /proc/[0-9]*/stat; do
    { line=$(<"$f"); } 2>/dev/null || continue
    rest=${line##*) }; rest=${rest#* }
    [[ "${rest%% *}" == "$1" ]] && echo "${line%% *}"
  done
}
find_ns_init() { # the inner script under INNER_PID (sudo -> unshare -> it), once it runs
  local p=$INNER_PID c depth
  for depth in 1 2 3 4; do
    for c in $(children_of "$p"); do
      # unshare's own command line names the inner script too: the inner script is the bash
      if [[ "$(cat "/proc/$c/comm" 2>/dev/null)" == bash ]] &&
        tr '\0' ' ' <"/proc/$c/cmdline" 2>/dev/null | grep -q -- "--inner $IN\b"; then NS_INIT=$c; return 0; fi
      p=$c
    done
  done
  return 1
}
cleanup() {
  rc=$?
  trap - EXIT TERM INT
  for f in "$HOSTPIDS"/*.pid; do [[ -f "$f" ]] && kill -TERM -- "-$(cat "$f")" 2>/dev/null; done
  if [[ -n "$INNER_PID" ]] && kill -0 "$INNER_PID" 2>/dev/null; then
    # the inner script stops what it started; when it ends, so does its PID namespace
    if [[ -n "$NS_INIT" ]]; then $SUDO kill -TERM "$NS_INIT" 2>/dev/null; else kill -TERM "$INNER_PID" 2>/dev/null; fi
    for _ in $(seq 40); do kill -0 "$INNER_PID" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$INNER_PID" 2>/dev/null; then
      log "the processes in the root did not stop in 20 s; killing them"
      if [[ -n "$NS_INIT" ]]; then $SUDO kill -KILL "$NS_INIT" 2>/dev/null; else kill -KILL "$INNER_PID" 2>/dev/null; fi
    fi
    wait "$INNER_PID" 2>/dev/null
  fi
  sleep 1
  for f in "$HOSTPIDS"/*.pid; do [[ -f "$f" ]] && kill -KILL -- "-$(cat "$f")" 2>/dev/null; rm -f "$f"; done
  rmdir "$HOSTPIDS" 2>/dev/null
  # the results: everything but the kits (copied when provisioned)
  if [[ -d "$IN_HOST/out" ]]; then
    for x in "$IN_HOST/out"/*; do
      [[ -e "$x" && "$(basename "$x")" != kits ]] && cp -a "$x" "$WORK/" 2>/dev/null
    done
  fi
  if [[ "${KEEP:-0}" == 1 ]]; then
    log "kept the run folder $IN_HOST"
  else
    [[ "$IN_HOST" == "$ROOT"/tmp/flarego-pt.* ]] && $SUDO rm -rf "$IN_HOST"
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 143' TERM INT

t0=$(date +%s.%N)
CALLER=""
[[ -n "$SUDO" ]] && CALLER="$(id -u):$(id -g)"
# A PID namespace of its own: when its first process (the inner script) ends, the kernel ends every
# process left in it, NVFlare's job processes included (they start their own sessions).
$SUDO unshare --pid --fork --kill-child=SIGTERM --mount --mount-proc="$ROOT/proc" \
  chroot "$ROOT" /usr/bin/env -i PATH=/usr/bin:/bin:/usr/sbin:/sbin HOME="$IN/home" TMPDIR="$IN/tmp" LANG=C.UTF-8 \
  PORT="$PORT" CONN_SEC="$CONN_SEC" SITES="$SITES" JOB_NAME="$(basename "$JOB")" NUM_ROUNDS="${NUM_ROUNDS:-}" \
  JOB_TIMEOUT="$JOB_TIMEOUT" REGISTER_TIMEOUT="$REGISTER_TIMEOUT" NVF_CLIENTS="$([[ -z "${CLIENT_CMD:-}" ]] && echo 1 || echo 0)" \
  CALLER="$CALLER" bash "$IN/$(basename "$ME")" --inner "$IN" > >(tee "$WORK/logs/root.log") 2>&1 </dev/null &
INNER_PID=$!
for _ in $(seq 100); do find_ns_init && break; kill -0 "$INNER_PID" 2>/dev/null || break; sleep 0.1; done
[[ -n "${NVF_PT_DEBUG:-}" ]] && log "inner: $INNER_PID, namespace init: ${NS_INIT:-not found}"

wait_for() { # wait_for FILE: until the inner script makes FILE; 1 if it ended first
  while [[ ! -e "$IN_HOST/state/$1" ]]; do
    kill -0 "$INNER_PID" 2>/dev/null || return 1
    sleep 0.2
  done
}
inner_failed() {
  wait "$INNER_PID"; rc=$?; INNER_PID=""
  why=$(grep -h 'FAILED:' "$WORK/logs/root.log" | tail -1 | sed 's/.*FAILED: //')
  die "${why:-the run in the root ended $1} (rc $rc; $WORK/logs/root.log)"
}
wait_for provisioned || inner_failed "before provisioning ended"
cp -a "$IN_HOST/out/kits" "$WORK/kits" || die "cannot copy the sites' kits"
wait_for server-ready || inner_failed "before the server listened"

if [[ -n "${CLIENT_CMD:-}" ]]; then
  for s in $SITES; do
    kit="$WORK/kits/$s"
    c=${CLIENT_CMD//\{kit\}/$kit}; c=${c//\{site\}/$s}
    (cd "$kit" && exec setsid bash -c "exec $c") >"$WORK/logs/$s.log" 2>&1 </dev/null &
    echo $! >"$HOSTPIDS/$s.pid"
  done
  log "clients started: $SITES"
fi

# until the inner script ends; a site that exits before the job is done fails the run
while kill -0 "$INNER_PID" 2>/dev/null; do
  if [[ -n "${CLIENT_CMD:-}" && ! -e "$IN_HOST/state/job-done" ]]; then
    for s in $SITES; do
      f="$HOSTPIDS/$s.pid"
      if [[ -f "$f" ]] && ! kill -0 "$(cat "$f")" 2>/dev/null; then
        wait "$(cat "$f")"; crc=$?
        rm -f "$f"
        # The admin script asks the system to shut down before it returns, so a site the server
        # shut down exits 0 just before job-done is written: a clean exit fails the run only if
        # the job is not reported done soon after.
        if [[ $crc == 0 ]]; then
          for _ in $(seq 120); do
            [[ -e "$IN_HOST/state/job-done" ]] && break
            kill -0 "$INNER_PID" 2>/dev/null || break
            sleep 0.5
          done
          [[ -e "$IN_HOST/state/job-done" ]] && continue
          kill -0 "$INNER_PID" 2>/dev/null || continue
        fi
        tail -20 "$WORK/logs/$s.log"
        die "$s exited (status $crc) before the job finished ($WORK/logs/$s.log)"
      fi
    done
  fi
  sleep 0.5
done
wait "$INNER_PID"; rc=$?; INNER_PID=""
for x in "$IN_HOST/out"/*; do [[ -e "$x" && "$(basename "$x")" != kits ]] && cp -a "$x" "$WORK/"; done
why=$(grep -h 'FAILED:' "$WORK/logs/root.log" | tail -1 | sed 's/.*FAILED: //')
if [[ $rc != 0 ]]; then
  # the first errors the participants logged usually say why
  errs=$(grep -h -E ' - ERROR - |Error: ' "$WORK"/logs/site-*.log "$WORK"/logs/server.log 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g' | cut -c1-300 | head -8)
  [[ -n "$errs" ]] && { log "first errors in the logs:"; echo "$errs"; }
  die "${why:-the run in the root failed} (rc $rc)"
fi
log "OK in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s: $WORK/FL_global_model.pt ($(tr -d '\n ' <"$WORK/result.json" | head -c 400))"
