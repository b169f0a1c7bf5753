//go:build interop

package persistor

import (
	"bytes"
	"crypto/rand"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"
	peertool "github.com/flarego/flarego/internal/peer"
)

// ageTool finds Debian's age and age-keygen (make python-peers installs
// them); missing, the test fails: a peer is never skipped here.
func ageTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found (Debian package age; make python-peers installs it): %v", name, err)
	}
	return p
}

func runTool(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(name), strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Owner files both ways with the age command: ours open with age -d,
// age's (binary and armored) with ours; identities from age-keygen read
// here, ours there.
func TestInteropAgeCLI(t *testing.T) {
	ageBin, keygen := ageTool(t, "age"), ageTool(t, "age-keygen")
	t.Logf("%s", strings.TrimSpace(runTool(t, ageBin, "--version")))
	dir := t.TempDir()
	msg := make([]byte, 3<<20+17) // several 64 KiB chunks and a partial one
	rand.Read(msg)
	plain := filepath.Join(dir, "plain")
	os.WriteFile(plain, msg, 0o600)

	// Our identity, age's tool.
	id, _ := GenerateIdentity()
	ours := filepath.Join(dir, "ours.key")
	os.WriteFile(ours, []byte(IdentityFile(id, time.Now())), 0o600)
	enc := filepath.Join(dir, "go.age")
	if err := WriteAgeFile(enc, []age.Recipient{id.Recipient()}, func(w io.Writer) error {
		_, err := w.Write(msg)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "by-age")
	runTool(t, ageBin, "-d", "-i", ours, "-o", out, enc)
	if b, _ := os.ReadFile(out); !bytes.Equal(b, msg) {
		t.Fatal("age -d did not give back what Go encrypted")
	}

	// age-keygen's identity, age encrypts (binary and armored), we open.
	theirs := filepath.Join(dir, "theirs.key")
	runTool(t, keygen, "-o", theirs)
	recip := strings.TrimSpace(runTool(t, keygen, "-y", theirs))
	ids, err := ReadIdentityFile(theirs)
	if err != nil {
		t.Fatal(err)
	}
	if got := ids[0].(*age.X25519Identity).Recipient().String(); got != recip {
		t.Fatalf("recipient %s, age-keygen -y says %s", got, recip)
	}
	for _, armor := range []bool{false, true} {
		f := filepath.Join(dir, "age.out")
		args := []string{"-r", recip, "-o", f}
		if armor {
			args = append(args, "-a")
		}
		runTool(t, ageBin, append(args, plain)...)
		got, err := ReadSealedUpTo(f, nil, ids, 1<<30, "a test file")
		if err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("armor %v: Go could not open age's file: %v", armor, err)
		}
		// With our identity, the clear error.
		if _, err := ReadSealedUpTo(f, nil, []age.Identity{id}, 1<<30, "a test file"); err == nil {
			t.Fatal("another identity opened age's file")
		}
	}
	// A file to two recipients (ours and age-keygen's) opens with either.
	rs, err := ParseRecipients("test", []string{id.Recipient().String(), recip})
	if err != nil {
		t.Fatal(err)
	}
	two := filepath.Join(dir, "two.age")
	WriteAgeFile(two, rs, func(w io.Writer) error { _, err := w.Write(msg[:100]); return err })
	for _, k := range []string{ours, theirs} {
		got := runTool(t, ageBin, "-d", "-i", k, two)
		if got != string(msg[:100]) {
			t.Fatalf("age -d -i %s of a two-recipient file", filepath.Base(k))
		}
	}
}

// Rotation matches cryptography's MultiFernet.rotate: the new key opens
// the file, the old does not, the timestamp is the original's.
func TestInteropRotateAsMultiFernet(t *testing.T) {
	dir := t.TempDir()
	k1, _ := GenerateKey()
	k2, _ := GenerateKey()
	old, newer := filepath.Join(dir, "old.key"), filepath.Join(dir, "new.key")
	os.WriteFile(old, []byte(k1.Encode()), 0o600)
	os.WriteFile(newer, []byte(k2.Encode()), 0o600)
	orig := filepath.Join(dir, "orig.tok")
	tok, err := fernetAt([]byte("weights"), k1, time.Now().Add(-72*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(orig, tok, 0o600)
	rotated := filepath.Join(dir, "rotated.tok")
	os.WriteFile(rotated, tok, 0o600)
	if err := RotateFile(rotated, []*Key{k1}, nil, Sealing{Key: k2}); err != nil {
		t.Fatal(err)
	}
	t.Log(strings.TrimSpace(peertool.Run(t, "fernet-rotated", old, newer, orig, rotated)))
}
