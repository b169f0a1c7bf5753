package main

import (
	"os"
	"path/filepath"
	"testing"
)

// A job's fingerprint changes with any file of its app or any --set pair,
// and only with them.
func TestJobFingerprint(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "config"), 0o755)
	os.WriteFile(filepath.Join(dir, "config", "config_fed_server.json"), []byte(`{"format_version": 2}`), 0o600)
	os.WriteFile(filepath.Join(dir, "custom.enc"), []byte("gAAAAA"), 0o600)
	sets := map[string]string{"num_rounds": "3", "secure_train": "false"}
	a, err := jobFingerprint(dir, sets)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := jobFingerprint(dir, map[string]string{"secure_train": "false", "num_rounds": "3"}); b != a {
		t.Errorf("the same job: %s, then %s", a, b)
	}
	if b, _ := jobFingerprint(dir, map[string]string{"num_rounds": "4", "secure_train": "false"}); b == a {
		t.Error("another num_rounds, the same fingerprint")
	}
	os.WriteFile(filepath.Join(dir, "custom.enc"), []byte("gAAAAB"), 0o600)
	if b, _ := jobFingerprint(dir, sets); b == a {
		t.Error("another file, the same fingerprint")
	}
	os.Remove(filepath.Join(dir, "custom.enc"))
	os.Mkdir(filepath.Join(dir, "custom.enc"), 0o755)
	if b, _ := jobFingerprint(dir, sets); b == a {
		t.Error("a file turned into a folder, the same fingerprint")
	}
	if _, err := jobFingerprint(filepath.Join(dir, "nope"), sets); err == nil {
		t.Error("a missing job folder has a fingerprint")
	}
}
