#!/usr/bin/env bash
# Runs every fuzz target of the module briefly: `make fuzz`.
#
# Targets are found, not listed: every `func FuzzXxx(f *testing.F)` in a
# _test.go file is run, so a new target cannot be forgotten and a moved one
# cannot silently fuzz nothing.
#
# Each target runs for a number of executions (-fuzztime Nx), not a duration:
# on Go 1.26 a duration can end in a spurious "context deadline exceeded"
# failure when the deadline races a worker's last call (golang/go#75804). A
# count has no deadline to race. FUZZSCALE multiplies every count (default 1;
# FUZZSCALE=10 for a longer look).
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
scale=${FUZZSCALE:-1}

# Executions per target, sized to a few seconds each on two cores; targets not
# named here run $default times. The slow ones build whole models or servers.
default=20000
declare -A count=(
	[FuzzAccumulate]=300
	[FuzzDecodeShareable]=2000
	[FuzzAdminPathsStayInWorkspace]=1500
	[FuzzUnpickle]=5000
	[FuzzDecode@./flare/cellnet/sfm]=3000
	[FuzzUnmarshal]=100000
	[FuzzDecode@./flare/npy]=100000
	[FuzzDecode@./flare/cellnet/lobs]=100000
	[FuzzDecode@./flare/cellnet/fobs]=100000
)

targets=$(grep -rEo --include='*_test.go' '^func Fuzz[A-Za-z0-9_]+\(f \*testing\.F\)' . |
	sed -E 's#^(.*)/[^/]+_test\.go:func (Fuzz[A-Za-z0-9_]+).*#\1 \2#' | sort -u)
[ -n "$targets" ] || { echo "fuzz: no fuzz targets found" >&2; exit 1; }

n=0
while read -r pkg name; do
	c=${count[$name@$pkg]:-${count[$name]:-$default}}
	c=$((c * scale))
	echo "$GO test -run '^\$' -fuzz '^$name\$' -fuzztime ${c}x $pkg"
	out=$("$GO" test -run '^$' -fuzz "^$name\$" -fuzztime "${c}x" "$pkg" 2>&1) || {
		printf '%s\n' "$out"
		echo "fuzz: $name in $pkg failed" >&2
		exit 1
	}
	if grep -q 'no fuzz tests to fuzz' <<<"$out"; then
		echo "fuzz: $name in $pkg did not run" >&2
		exit 1
	fi
	printf '%s\n' "$out" | tail -n 3
	n=$((n + 1))
done <<<"$targets"
echo "fuzz: $n targets passed"
