#!/usr/bin/env bash
# nvflare-pt-compare.sh ROOT MODEL.pt SUBMISSION... [--tol T] — nvflare_pt_compare.py run with the
# Debian 13 root's torch (this machine may have none): the saved global model against the
# NUM_STEPS-weighted mean of the sites' submissions. A SUBMISSION is a JSON file or a folder of
# them (see nvflare_pt_compare.py); it is copied into ROOT/tmp with its folder, so the weights
# files it names must be given relative to it. Prints the script's JSON line; its exit status.
# Needs root or passwordless sudo (unshare, chroot).
set -u -o pipefail
HERE=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
die() { echo "nvflare-pt-compare: $*" >&2; exit 2; }
[[ $# -ge 3 ]] || die "usage: nvflare-pt-compare.sh ROOT MODEL.pt SUBMISSION... [--tol T]"
ROOT=$(readlink -f "$1"); MODEL=$2; shift 2
[[ -f "$ROOT/.flarego-debian13" ]] || die "$ROOT is not a complete Debian 13 root (make debian13-root)"
[[ -f "$MODEL" ]] || die "no model file $MODEL"
SUDO=
[[ "$(id -u)" == 0 ]] || SUDO="sudo -n"
T=$(mktemp -d "$ROOT/tmp/flarego-cmp.XXXXXX") || die "cannot make a folder in $ROOT/tmp"
trap '[[ "$T" == "$ROOT"/tmp/flarego-cmp.* ]] && rm -rf "$T"' EXIT
chmod 755 "$T"
cp "$HERE/nvflare_pt_compare.py" "$T/" && cp "$MODEL" "$T/model.pt" || die "cannot copy into $T"
args=("${T#"$ROOT"}/model.pt")
i=0
while [[ $# -gt 0 ]]; do
  a=$1; shift
  if [[ "$a" == --tol ]]; then
    [[ $# -gt 0 ]] || die "--tol needs a value"
    args+=(--tol "$1"); shift; continue
  fi
  i=$((i + 1)); mkdir -p "$T/s$i"
  if [[ -d "$a" ]]; then
    cp -a "$a/." "$T/s$i/" || die "cannot copy $a"
    args+=("${T#"$ROOT"}/s$i")
  elif [[ -f "$a" ]]; then
    cp -a "$(dirname "$a")/." "$T/s$i/" || die "cannot copy the folder of $a"
    args+=("${T#"$ROOT"}/s$i/$(basename "$a")")
  else
    die "no submission $a"
  fi
done
$SUDO unshare --pid --fork --kill-child --mount --mount-proc="$ROOT/proc" chroot "$ROOT" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/tmp LANG=C.UTF-8 \
  python3 "${T#"$ROOT"}/nvflare_pt_compare.py" "${args[@]}"
