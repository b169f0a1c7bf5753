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
