package deploy

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// project is a test PKI as NVFlare's provisioning makes one: an RSA root
// CA, and an admin's RSA certificate and key signed by it.
type project struct {
	root     *x509.Certificate
	rootKey  *rsa.PrivateKey
	admin    *x509.Certificate
	adminPEM []byte
	adminKey *rsa.PrivateKey
}

var (
	projectsOnce sync.Once
	projects     [2]*project
)

// testProjects are two projects with roots of the same name (so only the
// keys tell them apart), made once: RSA keys take a while.
func testProjects(t testing.TB) (*project, *project) {
	t.Helper()
	projectsOnce.Do(func() {
		for i := range projects {
			projects[i] = newProject(t, "nvf_peer", "admin@nvidia.com")
		}
	})
	return projects[0], projects[1]
}

func rsaKey(t testing.TB) *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newProject(t testing.TB, name, admin string) *project {
	p := &project{rootKey: rsaKey(t)}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(360 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &p.rootKey.PublicKey, p.rootKey)
	if err != nil {
		t.Fatal(err)
	}
	if p.root, err = x509.ParseCertificate(der); err != nil {
		t.Fatal(err)
	}
	p.admin, p.adminPEM, p.adminKey = p.issue(t, admin)
	return p
}

// issue makes a certificate for cn signed by the project's root.
func (p *project) issue(t testing.TB, cn string) (*x509.Certificate, []byte, *rsa.PrivateKey) {
	key := rsaKey(t)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn, Organization: []string{"nvidia"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(360 * 24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.root, &key.PublicKey, p.rootKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), key
}

// signFolders signs every folder under dir as NVFlare's sign_folders
// does: in each, a JSON object from every file's name to the RSA-PSS
// signature of its bytes and from every subfolder's name to that of the
// name, and a copy of the signer's certificate.
func signFolders(t testing.TB, dir string, key *rsa.PrivateKey, certPEM []byte) {
	t.Helper()
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		entries, err := os.ReadDir(p)
		if err != nil {
			return err
		}
		sigs := map[string]string{}
		for _, e := range entries {
			if e.Name() == SigFile || e.Name() == SubmitterCertFile {
				continue
			}
			content := []byte(e.Name())
			if !e.IsDir() {
				if content, err = os.ReadFile(filepath.Join(p, e.Name())); err != nil {
					return err
				}
			}
			sigs[e.Name()] = signPSS(t, key, content)
		}
		b, _ := json.Marshal(sigs)
		if err := os.WriteFile(filepath.Join(p, SigFile), b, 0o644); err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(p, SubmitterCertFile), certPEM, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func signPSS(t testing.TB, key *rsa.PrivateKey, content []byte) string {
	h := sha256.Sum256(content)
	sig, err := rsa.SignPSS(rand.Reader, key, crypto.SHA256, h[:], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto})
	if err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(sig)
}

// writeApp writes an app folder like hello-numpy-sag's, with custom code.
func writeApp(t testing.TB, dir string) {
	t.Helper()
	for name, content := range map[string]string{
		"config/config_fed_client.json": `{"format_version": 2, "executors": []}`,
		"config/config_fed_server.json": `{"format_version": 2, "workflows": []}`,
		"custom/trainer.py":             "class Trainer: pass\n",
		"custom/nets/__init__.py":       "",
	} {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// signedApp is a signed app folder of project p.
func signedApp(t testing.TB, p *project) string {
	dir := filepath.Join(t.TempDir(), "app")
	writeApp(t, dir)
	signFolders(t, dir, p.adminKey, p.adminPEM)
	return dir
}
