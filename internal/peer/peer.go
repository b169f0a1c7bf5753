// Package peer runs the Python peer (testdata/interop/peer.py, with
// Debian's torch, cryptography and numpy) for the interop tests of every
// package: Debian 12's torch 1.13 on the host and, through Torches,
// Debian 13's torch 2.6 in the root of `make debian13-root`. $PYTHON picks the interpreter (default /usr/bin/python3). A
// missing peer fails the test; it never skips it.
package peer

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

// Script is the peer script's path, found from the working directory up.
func Script(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		p := filepath.Join(dir, "testdata", "interop", "peer.py")
		if _, err := os.Stat(p); err == nil {
			return p
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("testdata/interop/peer.py not found above the test's directory")
		}
		dir = parent
	}
}

// Python is the interpreter the peer runs with.
func Python() string {
	if py := os.Getenv("PYTHON"); py != "" {
		return py
	}
	return "/usr/bin/python3"
}

// Run runs peer.py with args and returns its output; a failure ends the test.
func Run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(Python(), append([]string{Script(t)}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("peer.py %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// NVFlare extracts the NVFlare 2.8.1 peer tarball once and returns the
// folder that holds nvflare/, for scripts that import NVFlare itself.
// $FLAREGO_NVFLARE_TGZ names the tarball; else it is looked for as
// shared/peers/nvflare-2.8.1.tgz beside or above the repository. Unlike
// the Python peer, it is not installed by make: missing, the test says
// so and skips, and fails under CI=true.
func NVFlare(t testing.TB) string {
	t.Helper()
	tgz := os.Getenv("FLAREGO_NVFLARE_TGZ")
	for dir := filepath.Dir(filepath.Dir(filepath.Dir(Script(t)))); tgz == ""; {
		p := filepath.Join(dir, "shared", "peers", "nvflare-2.8.1.tgz")
		if _, err := os.Stat(p); err == nil {
			tgz = p
			break
		}
		up := filepath.Dir(dir)
		if up == dir {
			break
		}
		dir = up
	}
	if tgz == "" {
		const msg = "the NVFlare 2.8.1 peer (shared/peers/nvflare-2.8.1.tgz, or $FLAREGO_NVFLARE_TGZ) is missing"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	dir := filepath.Join(os.TempDir(), "flarego-nvflare-2.8.1")
	if _, err := os.Stat(filepath.Join(dir, "nvflare", "__init__.py")); err != nil {
		tmp, err := os.MkdirTemp(os.TempDir(), "flarego-nvflare-")
		if err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("tar", "-xzf", tgz, "-C", tmp).CombinedOutput(); err != nil {
			t.Fatalf("extracting %s: %v\n%s", tgz, err, out)
		}
		if err := os.Rename(tmp, dir); err != nil {
			os.RemoveAll(tmp)
		}
	}
	return dir
}

// Shared finds shared/REL (the NVFlare peers and their tools) beside or
// above the repository. When it is missing the test says so and is
// skipped, or fails under CI=true.
func Shared(t testing.TB, rel string) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		p := filepath.Join(dir, "shared", rel)
		if _, err := os.Stat(p); err == nil {
			return p
		}
		up := filepath.Dir(dir)
		if up == dir {
			break
		}
		dir = up
	}
	msg := "the NVFlare peer (shared/" + rel + ") is missing"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// Torch is one torch the peer script runs with: Debian 12's torch 1.13
// (the host's $PYTHON) or Debian 13's torch 2.6 in the root that
// `make debian13-root` makes.
type Torch struct {
	Name string // "torch1.13" or "torch2.6", the subtest's name
	root string // the Debian 13 root; "" for the host's Python
}

// Torches are the torches the interop checks run against: the host's
// and, when the Debian 13 root is there, its torch 2.6. Without the
// root the test says so and goes on with the host's torch only; under
// CI=true that is a failure.
func Torches(t testing.TB) []Torch {
	t.Helper()
	ts := []Torch{{Name: "torch1.13"}}
	root, why := Debian13Root()
	if why != "" {
		if os.Getenv("CI") == "true" {
			t.Fatal(why)
		}
		t.Log(why + ": torch 2.6 is not checked")
		return ts
	}
	if os.Getuid() != 0 {
		msg := "running torch 2.6 in the Debian 13 root needs root (chroot, mount)"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Log(msg + ": torch 2.6 is not checked")
		return ts
	}
	return append(ts, Torch{Name: "torch2.6", root: root})
}

// EachTorch runs f as a subtest once per torch of Torches.
func EachTorch(t *testing.T, f func(t *testing.T, py Torch)) {
	t.Helper()
	for _, py := range Torches(t) {
		t.Run(py.Name, func(t *testing.T) { f(t, py) })
	}
}

// Debian13Root is the root of `make debian13-root`
// ($FLAREGO_DEBIAN13_ROOT, else ~/.cache/flarego/debian13), or why it
// cannot be used.
func Debian13Root() (root, why string) {
	root = os.Getenv("FLAREGO_DEBIAN13_ROOT")
	if root == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", "no Debian 13 root: $FLAREGO_DEBIAN13_ROOT is unset and there is no home folder"
		}
		root = filepath.Join(home, ".cache", "flarego", "debian13")
	}
	for _, p := range []string{"usr/bin/python3", "usr/lib/python3/dist-packages/torch/__init__.py"} {
		if _, err := os.Stat(filepath.Join(root, p)); err != nil {
			return "", "the Debian 13 root " + root + " is missing or incomplete (make debian13-root, or set $FLAREGO_DEBIAN13_ROOT)"
		}
	}
	return root, ""
}

// Run runs peer.py with args under this torch and returns its output; a
// failure ends the test. In the Debian 13 root, the repository and the
// temporary folder are bound at their own paths in a private mount
// namespace, so the paths in args mean the same inside and out.
func (py Torch) Run(t testing.TB, args ...string) string {
	t.Helper()
	script := Script(t)
	if py.root == "" {
		return Run(t, args...)
	}
	repo := filepath.Dir(filepath.Dir(filepath.Dir(script)))
	var binds []string
	for _, d := range []string{os.TempDir(), repo} {
		d, err := filepath.Abs(d)
		if err != nil {
			t.Fatal(err)
		}
		covered := false
		for _, b := range binds {
			if rel, err := filepath.Rel(b, d); err == nil && filepath.IsLocal(rel) {
				covered = true
			}
		}
		if !covered {
			binds = append(binds, d)
		}
	}
	// sh -c SCRIPT sh ROOT NBINDS BIND... -- PY ARGS...
	const inner = `set -e
R=$1; n=$2; shift 2
while [ "$n" -gt 0 ]; do mkdir -p "$R$1"; mount --bind "$1" "$R$1"; shift; n=$((n-1)); done
mountpoint -q "$R/proc" || mount -t proc proc "$R/proc"
exec chroot "$R" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/tmp LANG=C.UTF-8 python3 "$@"`
	argv := []string{"--mount", "--propagation", "private", "sh", "-c", inner, "sh", py.root, strconv.Itoa(len(binds))}
	argv = append(argv, binds...)
	argv = append(argv, script)
	argv = append(argv, args...)
	out, err := exec.Command("unshare", argv...).CombinedOutput()
	if err != nil {
		t.Fatalf("peer.py %v (%s in %s): %v\n%s", args, py.Name, py.root, err, out)
	}
	return string(out)
}
