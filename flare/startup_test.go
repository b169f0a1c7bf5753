package flare

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flarego/flarego/internal/testpki"
)

func provisioned(t *testing.T, name string) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(readFixture(t, "provisioned", name))
	if block == nil {
		t.Fatalf("%s: no PEM block", name)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// The server certificate NVFlare 2.0.5's provisioning makes names its host
// only in the CN: accepted for that host (as gRPC's C core does), refused
// for another host or under another root.
func TestVerifyServerAcceptsNVFlareProvisionedCertificates(t *testing.T) {
	root, srv, site := provisioned(t, "rootCA.pem"), provisioned(t, "server.crt"), provisioned(t, "site-1.crt")
	if len(srv.DNSNames)+len(srv.IPAddresses) != 0 || srv.Subject.CommonName != "localhost" {
		t.Fatalf("fixture changed: SANs %v %v, CN %q", srv.DNSNames, srv.IPAddresses, srv.Subject.CommonName)
	}
	if srv.VerifyHostname("localhost") == nil {
		t.Fatal("Go's own host check now accepts CN-only certificates; VerifyServer's fallback may be dropped")
	}
	pool := x509.NewCertPool()
	pool.AddCert(root)
	cs := func(c ...*x509.Certificate) tls.ConnectionState { return tls.ConnectionState{PeerCertificates: c} }
	// The fixture's certificates are valid for a year from provisioning.
	at := srv.NotBefore.Add(24 * time.Hour)
	verify := func(pool *x509.CertPool, host string) func(tls.ConnectionState) error {
		return verifyServerAt(pool, host, at)
	}
	if err := verify(pool, "localhost")(cs(srv)); err != nil {
		t.Errorf("provisioned server certificate refused: %v", err)
	}
	if err := verify(pool, "LOCALHOST")(cs(srv)); err != nil {
		t.Errorf("host names are case-insensitive: %v", err)
	}
	if err := verify(pool, "example.com")(cs(srv)); err == nil || !strings.Contains(err.Error(), `"localhost", not "example.com"`) {
		t.Errorf("another host: %v", err)
	}
	if err := verify(pool, "")(cs(srv)); err != nil {
		t.Errorf("chain only: %v", err)
	}
	if err := verify(testpki.NewCA(t).Pool(), "localhost")(cs(srv)); err == nil {
		t.Error("a certificate from another root was accepted")
	}
	if err := verify(pool, "localhost")(cs()); err == nil {
		t.Error("no certificate was accepted")
	}
	// A client certificate of the same project is not the server's.
	if err := verify(pool, "localhost")(cs(site)); err == nil {
		t.Error("site-1's certificate passed for the server localhost")
	}

	if err := verifyServerAt(pool, "localhost", srv.NotAfter.Add(time.Hour))(cs(srv)); err == nil {
		t.Error("an expired certificate was accepted")
	}

	// Certificates with SANs are matched by their SANs only.
	ca := testpki.NewCA(t)
	dir := t.TempDir()
	ca.Issue(t, "server", filepath.Join(dir, "s.crt"), filepath.Join(dir, "s.key"))
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, "s.crt"), filepath.Join(dir, "s.key"))
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(pair.Certificate[0])
	for host, ok := range map[string]bool{"localhost": true, "127.0.0.1": true, "server": false} {
		if err := verifyServerAt(ca.Pool(), host, time.Time{})(cs(leaf)); (err == nil) != ok {
			t.Errorf("SAN certificate for %s: %v", host, err)
		}
	}
}

// A server started from a client's kit used to listen and then fail,
// blaming fed_server.json; each command now checks the kit's kind first,
// naming the file. A named pipe in place of the kit is refused, not read.
func TestStartupKitKindChecked(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(content), 0o600)
		return p
	}
	srvKit, err := LoadStartupKit(write("fed_server.json", `{"servers": [{"name": "p", "service": {"target": "h:1"}, "admin_port": 2}]}`))
	if err != nil {
		t.Fatal(err)
	}
	cliKit, err := LoadStartupKit(write("fed_client.json", `{"servers": [{"name": "p", "service": {"target": "h:1"}}], "client": {}}`))
	if err != nil {
		t.Fatal(err)
	}
	if srvKit.CheckServer() != nil || cliKit.CheckClient() != nil {
		t.Fatal("a kit of the right kind was refused")
	}
	if err := cliKit.CheckServer(); err == nil || !strings.Contains(err.Error(), "fed_client.json is a client's startup kit") {
		t.Errorf("server from a client kit: %v", err)
	}
	if err := srvKit.CheckClient(); err == nil || !strings.Contains(err.Error(), "fed_server.json is the server's startup kit") {
		t.Errorf("client from the server kit: %v", err)
	}
	pipe := filepath.Join(dir, "pipe.json")
	if err := syscall.Mkfifo(pipe, 0o600); err == nil {
		if _, err := LoadStartupKit(pipe); err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("a named pipe as kit: %v", err)
		}
	}
	// An oversized file is named as such (it used to read as "unexpected EOF").
	big := write("big.json", `{"servers": [{"name": "`+strings.Repeat("p", 2<<20)+`"}]}`)
	if _, err := LoadStartupKit(big); err == nil || !strings.Contains(err.Error(), "larger than a configuration file") {
		t.Errorf("a 2 MiB kit: %v", err)
	}
	// So is trailing text after the JSON value (it used to be ignored).
	if _, err := LoadStartupKit(write("trail.json", `{"servers": []} {"servers": [1]}`)); err == nil {
		t.Error("a kit with a second JSON value was accepted")
	}
	// A certificate path that is a named pipe is refused before a read blocks.
	if err := syscall.Mkfifo(filepath.Join(dir, "cert.pem"), 0o600); err == nil {
		_, err := keyPair(filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"))
		if err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("a named pipe as certificate: %v", err)
		}
	}
}

func readFixture(t *testing.T, parts ...string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(append([]string{"..", "testdata", "nvflare"}, parts...)...))
	if err != nil {
		t.Fatal(err)
	}
	return b
}
