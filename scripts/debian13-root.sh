#!/usr/bin/env bash
# debian13-root.sh ROOT — a Debian 13 (trixie) root for the interop checks that need newer Python
# peers than Debian 12 packages: torch 2.6, torchvision, safetensors, onnxruntime, cryptography 43,
# Python 3.13, and the Debian packages NVFlare 2.8's server imports (grpcio, protobuf, msgpack,
# psutil, yaml, requests, numpy, websockets, aiohttp), and jemalloc for `flarego bench model`'s tuned
# torch 2.6.
#
# The first run takes a few minutes and about 2 GB (debootstrap, then apt inside the root); later
# runs see the stamp ROOT/.flarego-debian13 naming the same package list and only check that
# python3 imports them. It needs root: run it as root or with sudo available (it calls sudo then).
# /proc is mounted in the root (torch reads /proc/cpuinfo) and left mounted for the checks.
#
# Run a command in the root with
#   chroot ROOT /usr/bin/env -i PATH=/usr/bin:/bin HOME=/tmp LANG=C.UTF-8 python3 ...
# (the root sees only its own tree: put files under ROOT/tmp first).
set -euo pipefail
ROOT=${1:?usage: debian13-root.sh ROOT}
case "$ROOT" in /*) ;; *) ROOT="$PWD/$ROOT" ;; esac
SUITE=trixie
PKGS="python3 python3-torch python3-torchvision python3-numpy python3-safetensors python3-cryptography
python3-onnxruntime python3-onnx python3-pil python3-grpcio python3-protobuf python3-msgpack python3-psutil
python3-yaml python3-requests python3-websockets python3-aiohttp libjemalloc2"
PKGS=$(echo $PKGS)
IMPORTS="torch, torchvision, safetensors, onnxruntime, onnx, cryptography, numpy, grpc, google.protobuf, msgpack, psutil, yaml, requests, websockets, aiohttp"
STAMP="$ROOT/.flarego-debian13"

SUDO=
[[ "$(id -u)" == 0 ]] || SUDO=sudo
say() { echo "debian13 root: $*"; }
die() { echo "debian13 root: $*" >&2; exit 1; }

in_root() { $SUDO chroot "$ROOT" /usr/bin/env -i PATH=/usr/bin:/bin:/usr/sbin:/sbin HOME=/root LANG=C.UTF-8 "$@"; }
mount_proc() { mountpoint -q "$ROOT/proc" || $SUDO mount -t proc proc "$ROOT/proc"; }
versions() {
  in_root python3 -c "import $IMPORTS, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'safetensors', safetensors.__version__, 'cryptography', cryptography.__version__, 'numpy', numpy.__version__, 'grpcio', grpc.__version__)" 2>&1 |
    grep -v 'UCX\|cpuinfo'
}

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$SUITE $PKGS" ]]; then
  # stamped after python3 imported them all: now only that dpkg still has every package
  st=$(in_root dpkg-query -W -f='${Package} ${Status} ${Version}\n' $PKGS 2>&1) ||
    die "$ROOT is stamped complete but dpkg-query failed there ($st); remove $ROOT and run again"
  bad=$(echo "$st" | grep -v ' install ok installed ' || true)
  [[ -z "$bad" ]] || die "$ROOT is stamped complete but lacks: $bad; remove $ROOT and run again"
  mount_proc
  say "present at $ROOT ($(echo "$st" | awk '$1 == "python3" || $1 == "python3-torch" || $1 == "python3-cryptography" {printf "%s %s ", $1, $5}'))"
  exit 0
fi

t0=$(date +%s)
if [[ ! -x "$ROOT/usr/bin/apt-get" ]]; then
  if ! command -v debootstrap >/dev/null; then
    say "installing debootstrap"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq debootstrap >/dev/null
  fi
  say "debootstrap $SUITE into $ROOT"
  $SUDO mkdir -p "$ROOT"
  log=$(mktemp)
  $SUDO debootstrap --variant=minbase "$SUITE" "$ROOT" >"$log" 2>&1 || { tail -20 "$log" >&2; rm -f "$log"; die "debootstrap failed"; }
  rm -f "$log"
fi
$SUDO cp /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
mount_proc
say "apt-get install $PKGS"
in_root /bin/sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $PKGS >/dev/null && apt-get clean" ||
  die "apt-get in $ROOT failed"
v=$(versions) || die "python3 in $ROOT does not import the peers: $v"
echo "$SUITE $PKGS" | $SUDO tee "$STAMP" >/dev/null
say "made $ROOT in $(( $(date +%s) - t0 )) s ($v)"
