package flare

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// StartupKit is NVFlare 2.0's startup/fed_server.json or fed_client.json:
// where the server listens or the client connects, and the TLS files.
type StartupKit struct {
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
}

// LoadStartupKit reads a startup kit file.
func LoadStartupKit(path string) (*StartupKit, error) {
	k := &StartupKit{Dir: filepath.Dir(path)}
	if err := readJSON(path, k); err != nil {
		return nil, err
	}
	if len(k.Servers) == 0 || k.Servers[0].Service.Target == "" {
		return nil, fmt.Errorf("%s: no servers[0].service.target", path)
	}
	return k, nil
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

func (k *StartupKit) pool(name string) (*x509.CertPool, error) {
	if name == "" {
		return nil, errors.New("secure mode needs ssl_root_cert")
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
	cert, err := tls.LoadX509KeyPair(k.file(k.Client.SSLCert), k.file(k.Client.SSLPrivateKey))
	if err != nil {
		return nil, fmt.Errorf("client certificate: %w", err)
	}
	pool, err := k.pool(k.Client.SSLRootCert)
	if err != nil {
		return nil, err
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS12})), nil
}

// AdminTLS is the server's TLS configuration in secure mode, for the FL
// services and the admin console: its certificate, and client
// certificates from the root CA required.
func (k *StartupKit) AdminTLS() (*tls.Config, error) {
	s := k.Servers[0]
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
