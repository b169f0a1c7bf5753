package flare

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// StartupKit is NVFlare 2.0's startup/fed_server.json or fed_client.json:
// where the server listens or the client connects, and the TLS files.
type StartupKit struct {
	Path    string `json:"-"` // the file read
	Dir     string `json:"-"` // the startup folder; relative paths are under it
	Servers []struct {
		Name    string `json:"name"`
		Service struct {
			Target string `json:"target"`
		} `json:"service"`
		AdminHost        string  `json:"admin_host"`
		AdminPort        int     `json:"admin_port"`
		SSLPrivateKey    string  `json:"ssl_private_key"`
		SSLCert          string  `json:"ssl_cert"`
		SSLRootCert      string  `json:"ssl_root_cert"`
		Compression      string  `json:"compression"`
		HeartBeatTimeout float64 `json:"heart_beat_timeout"`
	} `json:"servers"`
	Client struct {
		SSLPrivateKey string  `json:"ssl_private_key"`
		SSLCert       string  `json:"ssl_cert"`
		SSLRootCert   string  `json:"ssl_root_cert"`
		Compression   string  `json:"compression"`
		RetryTimeout  float64 `json:"retry_timeout"`
	} `json:"client"`

	hasClient bool // the file has a "client" section, as a site's kit does
}

// LoadStartupKit reads a startup kit file.
func LoadStartupKit(path string) (*StartupKit, error) {
	k := &StartupKit{Path: path, Dir: filepath.Dir(path)}
	if err := readJSON(path, k); err != nil {
		return nil, err
	}
	if len(k.Servers) == 0 || k.Servers[0].Service.Target == "" {
		return nil, fmt.Errorf("%s: no servers[0].service.target", path)
	}
	var raw struct {
		Client json.RawMessage `json:"client"`
	}
	if err := readJSON(path, &raw); err != nil {
		return nil, err
	}
	k.hasClient = len(raw.Client) > 0 && string(raw.Client) != "null"
	return k, nil
}

// CheckServer fails when the kit is a site's (it has a "client" section):
// a server started from it would listen where its clients dial and fail
// later, blaming another file.
func (k *StartupKit) CheckServer() error {
	if k.hasClient {
		return fmt.Errorf("%s is a client's startup kit (it has a \"client\" section); the server reads fed_server.json from its own startup folder", k.Path)
	}
	return nil
}

// CheckClient fails when the kit is the server's (no "client" section but
// an admin_port).
func (k *StartupKit) CheckClient() error {
	if !k.hasClient && k.Servers[0].AdminPort > 0 {
		return fmt.Errorf("%s is the server's startup kit (admin_port and no \"client\" section); a client reads fed_client.json from its own startup folder", k.Path)
	}
	return nil
}

// Target is the server's host:port.
func (k *StartupKit) Target() string { return k.Servers[0].Service.Target }

// Project is the server's (project) name.
func (k *StartupKit) Project() string { return k.Servers[0].Name }

func (k *StartupKit) file(name string) string {
	if filepath.IsAbs(name) {
		return name
	}
	return filepath.Join(k.Dir, name)
}

// regular refuses TLS files that are not regular files before they are
// read (a named pipe would block the read); missing files are left to the
// reader's own message.
func regular(paths ...string) error {
	for _, p := range paths {
		if st, err := os.Stat(p); err == nil && !st.Mode().IsRegular() {
			return fmt.Errorf("%s is not a regular file", p)
		}
	}
	return nil
}

func (k *StartupKit) pool(name string) (*x509.CertPool, error) {
	if name == "" {
		return nil, errors.New("secure mode needs ssl_root_cert")
	}
	if err := regular(k.file(name)); err != nil {
		return nil, err
	}
	pem, err := os.ReadFile(k.file(name))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no PEM certificate", k.file(name))
	}
	return pool, nil
}

// ServerCredentials are the server's mutual-TLS credentials (secure_train):
// its certificate, and client certificates required and checked against
// the root CA.
func (k *StartupKit) ServerCredentials() (grpc.ServerOption, error) {
	cfg, err := k.AdminTLS()
	if err != nil {
		return nil, err
	}
	return grpc.Creds(credentials.NewTLS(cfg)), nil
}

// ClientCredentials are a client's mutual-TLS credentials.
func (k *StartupKit) ClientCredentials() (grpc.DialOption, error) {
	if err := regular(k.file(k.Client.SSLCert), k.file(k.Client.SSLPrivateKey)); err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(k.file(k.Client.SSLCert), k.file(k.Client.SSLPrivateKey))
	if err != nil {
		return nil, fmt.Errorf("client certificate: %w", err)
	}
	pool, err := k.pool(k.Client.SSLRootCert)
	if err != nil {
		return nil, err
	}
	host, _, err := net.SplitHostPort(k.Target())
	if err != nil {
		return nil, fmt.Errorf("target %q: %w", k.Target(), err)
	}
	// Go's own check would refuse NVFlare 2.0's provisioned server
	// certificates: they name the host only in the subject's CN, no SAN.
	// VerifyServer checks the chain and the name as gRPC's C core does.
	return grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS12,
		InsecureSkipVerify: true, VerifyConnection: VerifyServer(pool, host)})), nil
}

// VerifyServer checks a server's certificate chain against the root CA
// pool and, unless host is "", that it names host: by its DNS or IP SANs
// when it has any, else by its subject's common name (certificates from
// NVFlare 2.0's provisioning have only the CN, which gRPC's C core and
// Python's ssl still accept).
func VerifyServer(pool *x509.CertPool, host string) func(tls.ConnectionState) error {
	return verifyServerAt(pool, host, time.Time{})
}

// verifyServerAt is VerifyServer at a given time (zero: now).
func verifyServerAt(pool *x509.CertPool, host string, at time.Time) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("server sent no certificate")
		}
		leaf := cs.PeerCertificates[0]
		inter := x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, CurrentTime: at,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			return err
		}
		if host == "" {
			return nil
		}
		if len(leaf.DNSNames) > 0 || len(leaf.IPAddresses) > 0 {
			return leaf.VerifyHostname(host)
		}
		if cn := leaf.Subject.CommonName; cn == "" || !strings.EqualFold(cn, host) {
			return fmt.Errorf("server certificate is for %q, not %q", cn, host)
		}
		return nil
	}
}

// AdminTLS is the server's TLS configuration in secure mode, for the FL
// services and the admin console: its certificate, and client
// certificates from the root CA required.
func (k *StartupKit) AdminTLS() (*tls.Config, error) {
	s := k.Servers[0]
	if err := regular(k.file(s.SSLCert), k.file(s.SSLPrivateKey)); err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(k.file(s.SSLCert), k.file(s.SSLPrivateKey))
	if err != nil {
		return nil, fmt.Errorf("server certificate: %w", err)
	}
	pool, err := k.pool(s.SSLRootCert)
	if err != nil {
		return nil, err
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}, nil
}
