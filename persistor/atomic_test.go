package persistor

import (
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestAtomicSaveRemovesStaleTemps(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "model.pt.enc")
	old := time.Now().Add(-time.Hour)
	mk := func(name string, age time.Time) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("gAAAAA ciphertext of a crashed save"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, age, age); err != nil {
			t.Fatal(err)
		}
		return p
	}
	stale := mk(".model.pt.enc.tmp-1234567", old)       // a save that crashed an hour ago
	live := mk(".model.pt.enc.tmp-7654321", time.Now()) // a save going on now
	keep := []string{
		live,
		mk(".model.pt.enc.tmp-12ab", old),      // not a name os.CreateTemp makes
		mk(".model.pt.enc.tmp-", old),          // nor this
		mk(".best_model.pt.enc.tmp-999", old),  // another target's
		mk(".model.pt.enc.tmp-5.tmp-999", old), // the target "model.pt.enc.tmp-5"'s
		mk("model.pt.enc.tmp-42", old),         // not hidden: not ours
	}
	sub := filepath.Join(dir, ".model.pt.enc.tmp-555")
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	os.Chtimes(sub, old, old)
	keep = append(keep, sub)

	if err := WriteFileAtomic(target, 0o600, func(w io.Writer) error {
		_, err := w.Write([]byte("new"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("stale temporary file survived the next save (%v)", err)
	}
	for _, p := range keep {
		if _, err := os.Lstat(p); err != nil {
			t.Errorf("%s was removed: %v", filepath.Base(p), err)
		}
	}
	if b, _ := os.ReadFile(target); string(b) != "new" {
		t.Errorf("target holds %q", b)
	}

	// A failed save leaves no temporary file and removes nothing.
	stale = mk(".model.pt.enc.tmp-42", old)
	if err := WriteFileAtomic(target, 0o600, func(w io.Writer) error { return io.ErrShortWrite }); err == nil {
		t.Fatal("failed write reported success")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != len(keep)+2 { // keep, the target and the stale file
		for _, e := range entries {
			t.Log(e.Name())
		}
		t.Errorf("%d entries after a failed save, want %d", len(entries), len(keep)+2)
	}
	if _, err := os.Stat(stale); err != nil {
		t.Errorf("a failed save removed %s: %v", filepath.Base(stale), err)
	}
}

func TestSecuredPersistorRemovesCrashedSaves(t *testing.T) {
	dir := t.TempDir()
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	p := &SecuredPersistor{Path: filepath.Join(dir, "model_parameters.pt.enc"), Key: k}
	ck := decodeFixture(t, "sd_small.pt")
	// What a save killed between writing and renaming leaves.
	crashed := filepath.Join(dir, ".model_parameters.pt.enc.tmp-3141592653")
	if err := os.WriteFile(crashed, []byte("gAAAAA"), 0o600); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour)
	os.Chtimes(crashed, old, old)
	if err := p.Save(ck); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(crashed); !os.IsNotExist(err) {
		t.Errorf("ciphertext of a crashed save left behind (%v)", err)
	}
	if _, err := p.Get("global"); err != nil {
		t.Fatal(err)
	}
}
