// Package peer runs the Python peer (testdata/interop/peer.py, with
// Debian's torch, cryptography and numpy) for the interop tests of every
// package. $PYTHON picks the interpreter (default /usr/bin/python3). A
// missing peer fails the test; it never skips it.
package peer

import (
	"os"
	"os/exec"
	"path/filepath"
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
