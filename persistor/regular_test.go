package persistor

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A key file or .pt that is a named pipe used to block the open until a
// writer came; every reader refuses it at once, naming it and what it is.
func TestFIFOKeyAndModelRefused(t *testing.T) {
	dir := t.TempDir()
	keyFIFO := filepath.Join(dir, "secret_run_params.json")
	ptFIFO := filepath.Join(dir, "model.pt.enc")
	for _, p := range []string{keyFIFO, ptFIFO} {
		if err := syscall.Mkfifo(p, 0o600); err != nil {
			t.Skipf("no FIFOs here: %v", err)
		}
	}
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	readers := map[string]func() error{
		"ReadKeyFile": func() error { _, err := ReadKeyFile(keyFIFO); return err },
		"ReadPTFile":  func() error { _, err := ReadPTFile(ptFIFO); return err },
		"IsTokenFile": func() error { _, err := IsTokenFile(ptFIFO); return err },
		"ReadCheckpointFile": func() error {
			_, err := ReadCheckpointFile(ptFIFO, k)
			return err
		},
		"DecryptFile": func() error { _, err := DecryptFile(ptFIFO, NoTTL, k); return err },
	}
	for name, read := range readers {
		done := make(chan error, 1)
		go func() { done <- read() }()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), "is not a regular file (a named pipe)") || !strings.Contains(err.Error(), dir) {
				t.Errorf("%s: err %v, want it to name the file and say it is a named pipe", name, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s blocks on a named pipe", name)
		}
	}
}

func TestOpenRegularNamesWhatItIs(t *testing.T) {
	dir := t.TempDir()
	if _, err := OpenRegular(dir); err == nil || !strings.Contains(err.Error(), dir+" is not a regular file (a directory)") {
		t.Errorf("directory: %v", err)
	}
	if _, err := OpenRegular("/dev/null"); err == nil || !strings.Contains(err.Error(), "/dev/null is not a regular file (a device)") {
		t.Errorf("device: %v", err)
	}
	p := filepath.Join(dir, "f")
	if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(p, link); err != nil {
		t.Fatal(err)
	}
	f, err := OpenRegular(link)
	if err != nil {
		t.Fatalf("link to a regular file: %v", err)
	}
	f.Close()
}

// A key file holds 44 characters (or a small JSON object): a big one is
// refused before it is read, naming the file, and so is one padded with
// whitespace that would otherwise parse.
func TestOversizedKeyFileRefused(t *testing.T) {
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "key.txt")
	body := k.Encode() + strings.Repeat("\n", maxKeyFileBytes)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = ReadKeyFile(p)
	if err == nil || !strings.Contains(err.Error(), p+": file of 65580 bytes is larger than a key file may be (at most 65536)") {
		t.Fatalf("err %v", err)
	}
	if strings.Contains(err.Error(), k.Encode()) {
		t.Error("error reveals the key")
	}
	// At the bound it still reads.
	if err := os.WriteFile(p, []byte(body[:maxKeyFileBytes]), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadKeyFile(p); err != nil {
		t.Errorf("key file of exactly %d bytes: %v", maxKeyFileBytes, err)
	}
}

// A file that grows past the bound while it is read (or reports no size,
// as those under /proc) is cut off at the bound, not read to its end.
func TestReadOpenStopsAtBound(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, make([]byte, 100), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := OpenRegular(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// The size check passes at 100 bytes; growth then appears mid-read.
	r := &capReader{r: f, left: 10, err: func() error { return tooLarge(p, -1, 10, "a test file") }}
	buf := make([]byte, 64)
	var got int
	for {
		n, err := r.Read(buf)
		got += n
		if err != nil {
			if !strings.Contains(err.Error(), "grew past 10 bytes") {
				t.Fatalf("err %v", err)
			}
			break
		}
	}
	if got != 10 {
		t.Errorf("read %d bytes, want 10", got)
	}
	data, err := ReadRegular(p, 100, "a test file")
	if err != nil || len(data) != 100 {
		t.Errorf("readRegular at the bound: %d bytes, %v", len(data), err)
	}
}
