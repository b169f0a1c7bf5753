#!/usr/bin/env bash
# make interop-nvflare-main: hello-numpy-sag (ScatterAndGather + NPTrainer,
# 3 rounds) on a real NVFlare main (2.9.0dev) server with two `flarego
# client` sites, through shared/tools/nvflare-peer-run.sh. NVFlare main
# needs cryptography >= 42, so everything runs in a Debian forky root
# (FORKY_ROOT), made once with debootstrap and reused; the static flarego
# binary is copied into it. Needs root (chroot, mount) and, the first time,
# the Debian mirror. Exits 0 only when the job ends FINISHED:COMPLETED with
# the global model [[4,5,6],[7,8,9],[10,11,12]].
#
# Environment: FORKY_ROOT (the root), SHARED (the folder holding tools/ and
# peers/), NVMAIN_WORK (scratch, absolute), NVMAIN_PORT, CONN_SEC (clear |
# tls | mtls), JOB_TIMEOUT (s), BIN (the flarego binary to run).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
root=${FORKY_ROOT:?FORKY_ROOT: where the Debian forky root is (made if missing)}
shared=${SHARED:-}
work=${NVMAIN_WORK:-/tmp/flarego-nvflare-main}
port=${NVMAIN_PORT:-18140}
bin=${BIN:-$here/bin/flarego}
want='[[4.0, 5.0, 6.0], [7.0, 8.0, 9.0], [10.0, 11.0, 12.0]]'

fail() { echo "interop-nvflare-main: FAILED: $*" >&2; exit 1; }

[[ "$(id -u)" == 0 ]] || fail "needs root (debootstrap, chroot and mount): run it as root or with sudo"
[[ "$work" == /*/* ]] || fail "NVMAIN_WORK=$work: want an absolute path below a folder (it is emptied)"
if [[ -z "$shared" ]]; then
  for d in "$here/shared" "$here/../shared" "$here/../../shared"; do
    [[ -d "$d/tools" ]] && { shared=$(cd "$d" && pwd); break; }
  done
fi
script="$shared/tools/nvflare-peer-run.sh"
tgz=$(ls "$shared"/peers/nvflare-main-*.tgz 2>/dev/null | sort | tail -1 || true)
[[ -n "$shared" && -f "$script" ]] || fail "no shared/tools/nvflare-peer-run.sh beside or above $here (set SHARED=)"
[[ -n "$tgz" ]] || fail "no NVFlare main tarball in $shared/peers (nvflare-main-*.tgz)"
[[ -x "$bin" ]] || fail "no flarego binary at $bin (make build)"
! command -v file >/dev/null || file -L "$bin" | grep -q "statically linked" || fail "$bin is not statically linked (build with CGO_ENABLED=0)"

# The root: bookworm's debootstrap has no forky script; forky's is sid's.
if [[ ! -x "$root/usr/bin/apt-get" ]]; then
  command -v debootstrap >/dev/null || apt-get install -y -q debootstrap >/dev/null || fail "cannot install debootstrap"
  echo "interop-nvflare-main: making the Debian forky root $root (debootstrap, a few minutes)"
  mkdir -p "$(dirname "$root")"
  debootstrap --variant=minbase forky "$root" http://deb.debian.org/debian /usr/share/debootstrap/scripts/sid \
    > "$root.debootstrap.log" 2>&1 || fail "debootstrap of $root failed (see $root.debootstrap.log)"
fi
mkdir -p "$root/opt/flarego"
install -m 0755 "$bin" "$root/opt/flarego/flarego"

rm -rf "$work" "$root$work"
log="$work.log"
echo "interop-nvflare-main: NVFlare $(basename "$tgz") in $root, flarego sites, CONN_SEC=${CONN_SEC:-clear}, port $port; output in $log"
set +e
CHROOT="$root" CHROOT_SUITE=forky CAPTURE=0 SIMULATOR=0 JOB_TIMEOUT="${JOB_TIMEOUT:-180}" PORT="$port" \
  CONN_SEC="${CONN_SEC:-clear}" \
  CLIENT_CMD="/opt/flarego/flarego client -m {kit} -s fed_client.json --set secure_train=true uid={site} config_folder=config" \
  bash "$script" main "$work" "$tgz" > "$log" 2>&1
rc=$?
set -e
grep -E 'job result|final global model|server start|clients start|submit script|shutdown ->' "$log" || true
for s in site-1 site-2; do
  [[ -f "$work/logs-chroot/$s.log" ]] && { echo "--- $s.log"; cat "$work/logs-chroot/$s.log"; }
done
grep -q '"status": "FINISHED:COMPLETED"' "$log" || { tail -20 "$log"; fail "the job did not finish FINISHED:COMPLETED (script rc=$rc; logs in $work/logs-chroot, server in $root$work/ws)"; }
grep -F "final global model" "$log" | grep -qF "$want" || fail "the global model is not $want"
[[ $rc == 0 ]] || fail "nvflare-peer-run.sh exited $rc"
echo "interop-nvflare-main: OK: FINISHED:COMPLETED, global model $want"
