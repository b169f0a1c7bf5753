package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// buildFlarego builds the command into a temporary folder, for tests
// that run it as its own process.
func buildFlarego(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "flarego")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building flarego: %v\n%s", err, out)
	}
	return bin
}
