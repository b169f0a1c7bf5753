package persistor

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func pneumonia(t *testing.T) *StateDict {
	t.Helper()
	return decodeFixture(t, "pneumonia_init.pt").Model
}

func TestSecuredPersistorSaveLoad(t *testing.T) {
	dir := t.TempDir()
	k, _ := GenerateKey()
	p := &SecuredPersistor{Path: filepath.Join(dir, "model_parameters.pt.enc"), Key: k, Initial: pneumonia(t), ModelName: "PneumoniaModel"}
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
	raw, _ := os.ReadFile(p.Path)
	if !IsToken(raw) || bytes.Contains(raw, []byte("conv1.weight")) {
		t.Fatal("saved file is not a token")
	}
	// Nothing else is left in the directory: no temporary, no plaintext.
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if strings.Join(names, " ") != "best_model_parameters.pt.enc model_parameters.pt.enc" {
		t.Fatalf("directory holds %v", names)
	}
	got, err := p.Get("global")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range c.Model.Names() {
		if !bytes.Equal(got.Model.Get(n).Data, c.Model.Get(n).Data) {
			t.Fatalf("%s differs after save and load", n)
		}
	}
	inv, err := p.inventory()
	if err != nil || len(inv) != 2 || !inv[0].Encrypted || inv[1].Name != "best" {
		t.Fatalf("inventory %+v, %v", inv, err)
	}
	// Preload from the encrypted file, as a restarted server would.
	p2 := &SecuredPersistor{Path: p.Path, Key: k, Preload: p.Path}
	if c2, err := p2.Load(); err != nil || c2.Model.Len() != 18 {
		t.Fatalf("preload: %v", err)
	}
}

func TestSecuredPersistorFailsClosed(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "model.pt")
	p := &SecuredPersistor{Path: path, Initial: pneumonia(t)}
	c, _ := p.Load()
	if err := p.Save(c); !errors.Is(err, ErrPlaintextRefused) {
		t.Fatalf("save without key: %v", err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatal("a file was written without a key")
	}
	p.AllowPlaintext = true
	if err := p.Save(c); err != nil {
		t.Fatal(err)
	}
	if raw, _ := os.ReadFile(path); !bytes.HasPrefix(raw, []byte("PK")) {
		t.Fatal("explicit plaintext save did not write a .pt")
	}
}

func TestSecuredPersistorUnwritableKeepsOldFile(t *testing.T) {
	dir := t.TempDir()
	k, _ := GenerateKey()
	p := &SecuredPersistor{Path: filepath.Join(dir, "m.pt.enc"), Key: k, Initial: pneumonia(t)}
	c, _ := p.Load()
	if err := p.Save(c); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(p.Path)
	// A tensor whose data does not match its shape fails half way through.
	bad := NewStateDict()
	bad.Set("w", &Tensor{DType: Float32, Shape: []int{4}, Data: make([]byte, 3)})
	if err := p.Save(&Checkpoint{Model: bad}); err == nil {
		t.Fatal("bad tensor saved")
	}
	after, _ := os.ReadFile(p.Path)
	if !bytes.Equal(before, after) {
		t.Fatal("failed save changed the file")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("failed save left %d files", len(entries))
	}
	if os.Getuid() != 0 {
		os.Chmod(dir, 0o500)
		defer os.Chmod(dir, 0o700)
		if err := p.Save(c); err == nil {
			t.Fatal("save into a read-only directory succeeded")
		}
	}
	missing := &SecuredPersistor{Path: filepath.Join(dir, "no", "such", "dir", "m.pt.enc"), Key: k}
	if err := missing.Save(c); err == nil || !strings.Contains(err.Error(), "no/such/dir") {
		t.Fatalf("save into a missing directory: %v", err)
	}
}

func TestSecuredPersistorLoadErrors(t *testing.T) {
	k, _ := GenerateKey()
	if _, err := (&SecuredPersistor{}).Load(); err == nil {
		t.Error("loaded a model from nothing")
	}
	enc := filepath.Join("..", "testdata", "nvflare", "pneumonia-model_parameters.pt.enc")
	_, err := (&SecuredPersistor{Preload: enc, Key: k}).Load()
	if !errors.Is(err, ErrInvalidToken) || !strings.Contains(err.Error(), enc) {
		t.Errorf("preload with the wrong key: %v", err)
	}
	init := func() (*StateDict, error) { return pneumonia(t), nil }
	if c, err := (&SecuredPersistor{Init: init}).Load(); err != nil || c.Model.Len() != 18 {
		t.Errorf("init: %v", err)
	}
}

func TestModelFilesMustBeRegular(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "model.pt")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Skipf("no FIFOs here: %v", err)
	}
	done := make(chan error, 3)
	go func() {
		_, err := ReadMaybeEncrypted(fifo, nil)
		done <- err
	}()
	go func() {
		_, err := ReadCheckpointFile(fifo, nil)
		done <- err
	}()
	go func() {
		_, err := ReadPTFile(fifo)
		done <- err
	}()
	for range 3 {
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), "model.pt is not a regular file") {
				t.Errorf("err %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("reading a FIFO hangs")
		}
	}
}
