//go:build interop

package deploy

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flarego/flarego/internal/peer"
)

func signPeer(t *testing.T, args ...string) string {
	t.Helper()
	script := filepath.Join(filepath.Dir(peer.Script(t)), "sign_peer.py")
	cmd := exec.Command(peer.Python(), append([]string{script, peer.NVFlare(t)}, args...)...)
	cmd.Env = append(os.Environ(), "PYTHONPATH=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("sign_peer.py %v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

func readCert(t *testing.T, path string) *x509.Certificate {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		t.Fatalf("%s: no PEM", path)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// An app signed by NVFlare 2.8.1's own sign_folders, with a root CA and
// admin certificate from its own provisioning helpers, verifies here and
// deploys in secure mode; changed copies are refused here and by
// NVFlare's verify_folder_signature alike, except a signed file taken
// away, which only we refuse.
func TestInteropNVFlareSignedApp(t *testing.T) {
	pki := t.TempDir()
	signPeer(t, "pki", pki)
	rootPEM := filepath.Join(pki, "rootCA.pem")
	root := readCert(t, rootPEM)
	app := filepath.Join(t.TempDir(), "app")
	writeApp(t, app)
	signPeer(t, "sign", filepath.Join(pki, "admin.key"), filepath.Join(pki, "admin.crt"), app)

	signer, err := Verify(app, root)
	if err != nil || signer.Subject.CommonName != "admin@nvidia.com" {
		t.Fatalf("NVFlare-signed app: %v", err)
	}
	if got := signPeer(t, "verify", app, rootPEM); got != "True" {
		t.Fatalf("NVFlare refuses its own signing: %s", got)
	}
	if r := (&Site{Name: "site-1", Workspace: t.TempDir(), RootCA: root}).Deploy(deployRequest(zipApp(t, app))); !r.OK {
		t.Fatalf("deploy: %+v", r)
	}

	other := t.TempDir()
	signPeer(t, "pki", other)
	for _, c := range []struct {
		name, theirs, want string
		change             func(dir string)
	}{
		{"tampered", "False", "the signature does not match", func(dir string) {
			os.WriteFile(filepath.Join(dir, "custom", "trainer.py"), []byte("import os"), 0o644)
		}},
		{"extra file", "False", "not signed", func(dir string) {
			os.WriteFile(filepath.Join(dir, "config", "extra.json"), []byte("{}"), 0o644)
		}},
		{"signature removed", "False", "missing", func(dir string) { os.Remove(filepath.Join(dir, "custom", SigFile)) }},
		{"certificate from another root", "False", "not from the project's root CA", func(dir string) {
			cert, _ := os.ReadFile(filepath.Join(other, "admin.crt"))
			os.WriteFile(filepath.Join(dir, SubmitterCertFile), cert, 0o644)
		}},
		{"signed file removed", "True", "signed, but not in the app", func(dir string) {
			os.Remove(filepath.Join(dir, "custom", "trainer.py"))
		}},
	} {
		dir := filepath.Join(t.TempDir(), "app")
		if err := os.CopyFS(dir, os.DirFS(app)); err != nil {
			t.Fatal(err)
		}
		c.change(dir)
		if _, err := Verify(dir, root); !errors.Is(err, ErrSignature) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: ours: %v", c.name, err)
		}
		if got := signPeer(t, "verify", dir, rootPEM); got != c.theirs {
			t.Errorf("%s: NVFlare says %s, want %s", c.name, got, c.theirs)
		}
	}
	if _, err := Verify(app, readCert(t, filepath.Join(other, "rootCA.pem"))); !errors.Is(err, ErrSignature) {
		t.Errorf("another project's root: %v", err)
	}
}
