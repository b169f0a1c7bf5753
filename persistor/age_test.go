package persistor

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"
	"filippo.io/age/armor"
	"github.com/fernet/fernet-go"
)

// fernetAt is a Fernet token of plain made at ts.
func fernetAt(plain []byte, k *Key, ts time.Time) ([]byte, error) {
	return fernet.EncryptAndSignAtTime(plain, &k.k, ts)
}

func newIdentity(t *testing.T) *age.X25519Identity {
	t.Helper()
	id, err := GenerateIdentity()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func sameModel(t *testing.T, got, want *StateDict) {
	t.Helper()
	for _, n := range want.Names() {
		if g := got.Get(n); g == nil || !bytes.Equal(g.Data, want.Get(n).Data) {
			t.Fatalf("%s differs", n)
		}
	}
}

// The secured persistor with owner recipients: what it saves is an age
// file its own key does not open; it serves what it saved from memory;
// the owner's identity opens the file, another identity does not.
func TestSecuredPersistorToRecipients(t *testing.T) {
	dir := t.TempDir()
	k, _ := GenerateKey()
	owner, other := newIdentity(t), newIdentity(t)
	p := &SecuredPersistor{Path: filepath.Join(dir, "model_parameters.pt.enc"), Key: k,
		Recipients: []age.Recipient{owner.Recipient()}, Initial: pneumonia(t), ModelName: "PneumoniaModel"}
	c, err := p.Load()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Save(c); err != nil {
		t.Fatal(err)
	}
	if err := p.saveBest(c); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(p.Path)
	if err != nil {
		t.Fatal(err)
	}
	if !IsAge(raw) || IsToken(raw) || bytes.Contains(raw, []byte("conv1.weight")) {
		t.Fatalf("saved file is not an age file: %.40q", raw)
	}
	if st, _ := os.Stat(p.Path); st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", st.Mode().Perm())
	}
	got, err := p.Get("global")
	if err != nil {
		t.Fatal(err)
	}
	sameModel(t, got.Model, c.Model)
	if inv, err := p.inventory(); err != nil || len(inv) != 2 || !inv[0].Encrypted || !inv[1].Encrypted {
		t.Fatalf("inventory %+v, %v", inv, err)
	}

	// The server's key does not open it, and says why.
	if _, err := ReadCheckpointFile(p.Path, k); err == nil || !strings.Contains(err.Error(), "no identity was given") {
		t.Fatalf("read with the Fernet key only: %v", err)
	}
	if _, err := ReadCheckpointFileWith(p.Path, k, []age.Identity{other}); !errors.Is(err, ErrWrongIdentity) || !strings.Contains(err.Error(), p.Path) {
		t.Fatalf("read with another identity: %v", err)
	}
	ck, err := ReadCheckpointFileWith(p.Path, nil, []age.Identity{other, owner})
	if err != nil {
		t.Fatal(err)
	}
	sameModel(t, ck.Model, c.Model)

	// A restarted server preloads the model only with the identity.
	p2 := &SecuredPersistor{Path: p.Path, Key: k, Preload: p.Path}
	if _, err := p2.Load(); err == nil {
		t.Fatal("preload of an age file without an identity worked")
	}
	p2.Identities = []age.Identity{owner}
	if ck, err := p2.Load(); err != nil {
		t.Fatal(err)
	} else {
		sameModel(t, ck.Model, c.Model)
	}
	// The directory holds the two age files and nothing else.
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Fatalf("directory holds %d entries", len(entries))
	}
}

func TestAgeFilesArmoredAndLimits(t *testing.T) {
	dir := t.TempDir()
	id := newIdentity(t)
	name := filepath.Join(dir, "f.age")
	plain := bytes.Repeat([]byte("x-ray "), 1000)
	if err := WriteAgeFile(name, []age.Recipient{id.Recipient()}, func(w io.Writer) error {
		_, err := w.Write(plain)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := WriteAgeFile(name, nil, nil); err == nil || !strings.Contains(err.Error(), "no age recipient") {
		t.Fatalf("no recipients: %v", err)
	}
	got, err := ReadSealedUpTo(name, nil, []age.Identity{id}, 1<<20, "a test file")
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("read back: %v", err)
	}
	if _, err := ReadSealedUpTo(name, nil, []age.Identity{id}, 100, "a test file"); err == nil || !strings.Contains(err.Error(), "at most 100 bytes") {
		t.Fatalf("over the limit: %v", err)
	}
	// An armored file (age -a) reads the same.
	var arm bytes.Buffer
	aw := armor.NewWriter(&arm)
	ew, _ := age.Encrypt(aw, id.Recipient())
	ew.Write(plain)
	ew.Close()
	aw.Close()
	armName := filepath.Join(dir, "f.asc")
	os.WriteFile(armName, arm.Bytes(), 0o600)
	if got, err := ReadSealedUpTo(armName, nil, []age.Identity{id}, 1<<20, "a test file"); err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("armored: %v", err)
	}
	// Truncated and corrupted files are errors naming the file.
	raw, _ := os.ReadFile(name)
	for what, b := range map[string][]byte{
		"truncated": raw[:len(raw)-20],
		"flipped":   append(append([]byte(nil), raw[:len(raw)-1]...), raw[len(raw)-1]^1),
		"header":    []byte(ageMagic + "-> X25519 AAAA\n"),
	} {
		bad := filepath.Join(dir, what+".age")
		os.WriteFile(bad, b, 0o600)
		if _, err := ReadSealedUpTo(bad, nil, []age.Identity{id}, 1<<20, "a test file"); err == nil || !strings.Contains(err.Error(), bad) {
			t.Errorf("%s: %v", what, err)
		}
	}
}

func TestReadParamsRecipients(t *testing.T) {
	dir := t.TempDir()
	a, b := newIdentity(t), newIdentity(t)
	write := func(s string) string {
		p := filepath.Join(dir, "secret_run_params.json")
		os.WriteFile(p, []byte(s), 0o600)
		return p
	}
	k, _ := GenerateKey()
	for _, tc := range []struct {
		text string
		n    int
		err  string
	}{
		{`{"key": "` + k.Encode() + `"}`, 0, ""},
		{k.Encode(), 0, ""},
		{`{"key": "` + k.Encode() + `", "recipients": "` + a.Recipient().String() + `"}`, 1, ""},
		{`{"key": "` + k.Encode() + `", "recipients": ["` + a.Recipient().String() + `", "` + b.Recipient().String() + `"]}`, 2, ""},
		{`{"recipients": ["` + a.String() + `"]}`, 0, "is a secret key"},
		{`{"recipients": ["age1nothing"]}`, 0, "recipient 1"},
		{`{"recipients": 5}`, 0, "neither a string nor a list"},
		{`{"recipients": []}`, 0, "is empty"},
		{`{"key": "` + k.Encode() + `", `, 0, "malformed JSON"},
	} {
		rs, err := ReadParamsRecipients(write(tc.text))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%.60s: %v, want %q", tc.text, err, tc.err)
			}
			if err != nil && (strings.Contains(err.Error(), k.Encode()) || strings.Contains(err.Error(), a.String())) {
				t.Errorf("error shows a secret: %v", err)
			}
			continue
		}
		if err != nil || len(rs) != tc.n {
			t.Errorf("%.60s: %d recipients, %v; want %d", tc.text, len(rs), err, tc.n)
		}
	}
	if rs, err := ReadParamsRecipients(filepath.Join(dir, "missing.json")); rs != nil || err != nil {
		t.Errorf("missing file: %v %v", rs, err)
	}
}

// Rotation as MultiFernet.rotate does it: the old key opens, the new key
// encrypts, the timestamp stays; a wrong key changes nothing; the age
// equivalents and Fernet to age.
func TestRotateFile(t *testing.T) {
	dir := t.TempDir()
	k1, _ := GenerateKey()
	k2, _ := GenerateKey()
	k3, _ := GenerateKey()
	plain := []byte("model bytes")
	name := filepath.Join(dir, "m.pt.enc")
	tok, err := fernetAt(plain, k1, time.Unix(1_700_000_000, 0))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(name, tok, 0o600)

	if err := RotateFile(name, []*Key{k3}, nil, Sealing{Key: k2}); err == nil {
		t.Fatal("rotation with a wrong old key worked")
	}
	if b, _ := os.ReadFile(name); !bytes.Equal(b, tok) {
		t.Fatal("a failed rotation changed the file")
	}
	if err := RotateFile(name, []*Key{k1}, nil, Sealing{Key: k2}); err != nil {
		t.Fatal(err)
	}
	rot, _ := os.ReadFile(name)
	if got, err := Decrypt(rot, NoTTL, k2); err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("after rotation: %v", err)
	}
	if _, err := Decrypt(rot, NoTTL, k1); err == nil {
		t.Fatal("the old key still opens the rotated file")
	}
	raw, _ := decodeToken(bytes.Clone(rot))
	if ts := binary.BigEndian.Uint64(raw[1:9]); ts != 1_700_000_000 {
		t.Errorf("timestamp %d after rotation, want the original", ts)
	}
	// Rotating again with the new key as the only one changes nothing it
	// cannot open (as MultiFernet, the new key opens too).
	if err := RotateFile(name, nil, nil, Sealing{Key: k2}); err != nil {
		t.Fatal(err)
	}

	// Fernet to an owner's recipient, then from that owner to another.
	a, b := newIdentity(t), newIdentity(t)
	if err := RotateFile(name, []*Key{k2}, nil, Sealing{Recipients: []age.Recipient{a.Recipient()}}); err != nil {
		t.Fatal(err)
	}
	if got, err := ReadSealedUpTo(name, nil, []age.Identity{a}, 1<<20, "x"); err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("after rotation to age: %v", err)
	}
	if err := RotateFile(name, nil, []age.Identity{b}, Sealing{Recipients: []age.Recipient{b.Recipient()}}); !errors.Is(err, ErrWrongIdentity) {
		t.Fatalf("age rotation with the wrong identity: %v", err)
	}
	if err := RotateFile(name, nil, []age.Identity{a}, Sealing{Recipients: []age.Recipient{b.Recipient()}}); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadSealedUpTo(name, nil, []age.Identity{a}, 1<<20, "x"); !errors.Is(err, ErrWrongIdentity) {
		t.Fatalf("the old identity still opens the rotated file: %v", err)
	}
	if err := RotateFile(name, nil, []age.Identity{b}, Sealing{Key: k1}); err != nil {
		t.Fatal(err)
	}
	if got, err := DecryptFile(name, NoTTL, k1); err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("age back to Fernet: %v", err)
	}
	// A plain file is not rotated.
	pl := filepath.Join(dir, "plain.pt")
	os.WriteFile(pl, plain, 0o600)
	if err := RotateFile(pl, []*Key{k1}, nil, Sealing{Key: k2}); err == nil || !strings.Contains(err.Error(), "not encrypted") {
		t.Fatalf("plain file: %v", err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Fatalf("rotation left %d files", len(entries))
	}
}

// FuzzAgeOpen: any bytes that start like an age file give an error or
// the plaintext, never a panic, within the size limit.
func FuzzAgeOpen(f *testing.F) {
	id, _ := GenerateIdentity()
	var buf bytes.Buffer
	w, _ := age.Encrypt(&buf, id.Recipient())
	w.Write([]byte("seed plaintext"))
	w.Close()
	f.Add(buf.Bytes())
	f.Add([]byte(ageMagic))
	f.Add([]byte(ageArmorMagic + "\nYWdl\n-----END AGE ENCRYPTED FILE-----\n"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		name := filepath.Join(dir, "f.age")
		if err := os.WriteFile(name, data, 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := ReadSealedUpTo(name, nil, []age.Identity{id}, 1<<16, "a fuzz file")
		if err == nil && len(got) > 1<<16 {
			t.Fatalf("%d bytes past the limit", len(got))
		}
	})
}
