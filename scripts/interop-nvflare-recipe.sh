#!/usr/bin/env bash
# make interop-nvflare-recipe: the job NVFlare 2.8.1's Recipe API exports for
# examples/hello-world/hello-numpy (NumpyFedAvgRecipe: the FedAvg controller,
# NPModelPersistor, sites running the example's client.py through
# InProcessClientAPIExecutor) with two real NVFlare 2.8.1 clients and
# NVFlare's flare_api submitting, on flarego server, through
# shared/tools/nvflare-peer-run.sh (JOB_KIND=recipe). NVFlare's job tools
# need pydantic 2 (Debian trixie's python3-pydantic) and pyhocon (not
# packaged by Debian: give PYHOCON_MIRROR, a bare git copy of
# chimpler/pyhocon), and the example's client.py, which NVFlare's release
# tarball lacks (give NVFLARE_MIRROR, a bare git copy of NVIDIA/NVFlare with
# the tag 2.8.1). Everything runs in a Debian trixie root (RECIPE_ROOT, made
# once by the peer tool with debootstrap); the static flarego binary is
# copied into it. Needs root. Exits 0 only when the job ends
# FINISHED:COMPLETED with the global model [[4,5,6],[7,8,9],[10,11,12]].
# Not part of make interop or CI: pyhocon cannot be installed there.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
root=${RECIPE_ROOT:-$HOME/.cache/flarego/nvf-trixie}
nvflare=${NVFLARE_MIRROR:?NVFLARE_MIRROR: a bare git copy of NVIDIA/NVFlare holding the tag 2.8.1}
pyhocon=${PYHOCON_MIRROR:?PYHOCON_MIRROR: a bare git copy of chimpler/pyhocon}
shared=${SHARED:-}
work=${RECIPE_WORK:-/tmp/flarego-nvflare-recipe}
port=${RECIPE_PORT:-18163}
bin=${BIN:-$here/bin/flarego}
want='[[4.0, 5.0, 6.0], [7.0, 8.0, 9.0], [10.0, 11.0, 12.0]]'

fail() { echo "interop-nvflare-recipe: FAILED: $*" >&2; exit 1; }

[[ "$(id -u)" == 0 ]] || fail "needs root (debootstrap, chroot and mount)"
[[ "$work" == /*/* ]] || fail "RECIPE_WORK=$work: want an absolute path below a folder (it is emptied)"
if [[ -z "$shared" ]]; then
  for d in "$here/shared" "$here/../shared" "$here/../../shared"; do
    [[ -d "$d/tools" ]] && { shared=$(cd "$d" && pwd); break; }
  done
fi
script="$shared/tools/nvflare-peer-run.sh"
[[ -n "$shared" && -f "$script" ]] || fail "no shared/tools/nvflare-peer-run.sh beside or above $here (set SHARED=)"
[[ -x "$bin" ]] || fail "no flarego binary at $bin (make build)"
git -C "$nvflare" rev-parse -q --verify "2.8.1^{commit}" >/dev/null || fail "$nvflare has no tag 2.8.1"

if [[ ! -x "$root/usr/bin/apt-get" ]]; then
  command -v debootstrap >/dev/null || apt-get install -y -q debootstrap >/dev/null
  echo "interop-nvflare-recipe: making the Debian trixie root $root (a few minutes, once)"
  debootstrap --variant=minbase trixie "$root" >/tmp/flarego-recipe-debootstrap.log 2>&1 || fail "debootstrap failed (/tmp/flarego-recipe-debootstrap.log)"
fi
mkdir -p "$root/opt/flarego"
cp "$bin" "$root/opt/flarego/flarego"
rm -rf "$work"
t0=$(date +%s.%N)
out=$(CHROOT=$root JOB_KIND=recipe PYHOCON_MIRROR=$pyhocon CAPTURE=0 SIMULATOR=0 JOB_TIMEOUT=${JOB_TIMEOUT:-180} PORT=$port \
  SERVER_CMD="/opt/flarego/flarego server -m {kit} -s fed_server.json --set secure_train=true config_folder=config" \
  bash "$script" 2.8.1 "$work" "$nvflare" 2>&1 | tee /dev/stderr) || true
grep -q "job result: .*FINISHED:COMPLETED" <<<"$out" || fail "the job did not complete (logs: $work/logs-chroot)"
grep -qF "models/server.npy $want" <<<"$out" || fail "the final model is not $want"
echo "interop-nvflare-recipe: OK in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s"
