package flare

import (
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/flarego/flarego/persistor"
)

// KitServer is a server entry of a startup kit.
type KitServer struct {
	Name    string `json:"name"`
	Service struct {
		Target string `json:"target"`
		// Scheme is the driver of an NVFlare 2.4+ kit: grpc (the one
		// flarego speaks), http (WebSocket), tcp.
		Scheme string `json:"scheme"`
	} `json:"service"`
	// Identity is the server's certificate name in an NVFlare 2.4+
	// kit (the server checks in with it at registration).
	Identity         string  `json:"identity"`
	AdminHost        string  `json:"admin_host"`
	AdminPort        int     `json:"admin_port"`
	SSLPrivateKey    string  `json:"ssl_private_key"`
	SSLCert          string  `json:"ssl_cert"`
	SSLRootCert      string  `json:"ssl_root_cert"`
	Compression      string  `json:"compression"`
	HeartBeatTimeout float64 `json:"heart_beat_timeout"`
	// ConnectionSecurity is an NVFlare 2.4+ server's transport
	// security: clear, tls or mtls.
	ConnectionSecurity string `json:"connection_security"`
}

// StartupKit is NVFlare 2.0's startup/fed_server.json or fed_client.json:
// where the server listens or the client connects, and the TLS files.
type StartupKit struct {
	Path    string      `json:"-"` // the file read
	Dir     string      `json:"-"` // the startup folder; relative paths are under it
	Servers []KitServer `json:"servers"`
	Client  struct {
		SSLPrivateKey string  `json:"ssl_private_key"`
		SSLCert       string  `json:"ssl_cert"`
		SSLRootCert   string  `json:"ssl_root_cert"`
		Compression   string  `json:"compression"`
		RetryTimeout  float64 `json:"retry_timeout"`
		// ConnectionSecurity is an NVFlare 2.4+ site's transport
		// security: clear, tls (server authenticated) or mtls (both).
		ConnectionSecurity string `json:"connection_security"`
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

// CellNet says whether the kit is NVFlare 2.4+'s (CellNet: one gRPC
// stream of SFM frames) rather than 2.0's: provisioning writes the
// server's "identity" and the service's "scheme" into every 2.4+ kit and
// neither into a 2.0 one, whose server is named by "name" alone.
func (k *StartupKit) CellNet() bool {
	return len(k.Servers) > 0 && (k.Servers[0].Identity != "" || k.Servers[0].Service.Scheme != "")
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

// maxPEMBytes bounds a certificate or key file of a startup kit (a few KiB).
const maxPEMBytes = 1 << 20

// readPEM reads a startup kit's certificate or key file: a regular file
// (a named pipe would block the read) of at most maxPEMBytes.
func readPEM(path string) ([]byte, error) {
	return persistor.ReadRegular(path, maxPEMBytes, "a certificate or key file")
}

// keyPair loads a certificate and its private key.
func keyPair(certFile, keyFile string) (tls.Certificate, error) {
	certPEM, err := readPEM(certFile)
	if err != nil {
		return tls.Certificate{}, err
	}
	keyPEM, err := readPEM(keyFile)
	if err != nil {
		return tls.Certificate{}, err
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("%s, %s: %w", certFile, keyFile, err)
	}
	return cert, nil
}

func (k *StartupKit) pool(name string) (*x509.CertPool, error) {
	if name == "" {
		return nil, errors.New("secure mode needs ssl_root_cert")
	}
	pem, err := readPEM(k.file(name))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no PEM certificate", k.file(name))
	}
	return pool, nil
}

// ClientTLSConfig is a client's mutual-TLS configuration (secure_train):
// its certificate, and the server's chain and name checked against the
// kit's root CA and target host.
func (k *StartupKit) ClientTLSConfig() (*tls.Config, error) {
	if k.Client.SSLRootCert == "" {
		return nil, errors.New("secure mode needs ssl_root_cert")
	}
	host, _, err := net.SplitHostPort(k.Target())
	if err != nil {
		return nil, fmt.Errorf("target %q: %w", k.Target(), err)
	}
	return ClientTLS(k.file(k.Client.SSLRootCert), k.file(k.Client.SSLCert), k.file(k.Client.SSLPrivateKey), host)
}

// ClientTLS is the TLS configuration of a client of an NVFlare server (an
// FL client, an admin console): its certificate and key, and the server's
// chain checked against the root CA and, unless host is "", the server's
// name checked by [VerifyServer]. Go's own check would refuse NVFlare
// 2.0's provisioned server certificates: they name the host only in the
// subject's CN, no SAN. (NVFlare's admin console does not check the name:
// its certificates name the server by project.)
func ClientTLS(rootCert, cert, key, host string) (*tls.Config, error) {
	if rootCert == "" {
		return nil, errors.New("secure mode needs a root certificate")
	}
	pair, err := keyPair(cert, key)
	if err != nil {
		return nil, fmt.Errorf("client certificate: %w", err)
	}
	pem, err := readPEM(rootCert)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no PEM certificate", rootCert)
	}
	return &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: pool, MinVersion: tls.VersionTLS12,
		InsecureSkipVerify: true, VerifyConnection: VerifyServer(pool, host)}, nil
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

// ServerTLS is the server's TLS configuration in secure mode
// (secure_train), for the FL services and the admin console: its
// certificate, and client certificates from the root CA required.
func (k *StartupKit) ServerTLS() (*tls.Config, error) {
	return k.serverTLS(tls.RequireAndVerifyClientCert)
}

// CellNetServerTLS is an NVFlare 2.4+ server's TLS as its kit's
// connection_security says: nil for clear, the server's certificate for
// tls, and client certificates required (from the root CA) for mtls.
func (k *StartupKit) CellNetServerTLS() (*tls.Config, error) {
	switch s := strings.ToLower(k.Servers[0].ConnectionSecurity); s {
	case "clear":
		return nil, nil
	case "tls":
		return k.serverTLS(tls.NoClientCert)
	case "", "mtls":
		return k.serverTLS(tls.RequireAndVerifyClientCert)
	default:
		return nil, fmt.Errorf("servers[0].connection_security %q: want clear, tls or mtls", LogCut(s))
	}
}

func (k *StartupKit) serverTLS(auth tls.ClientAuthType) (*tls.Config, error) {
	s := k.Servers[0]
	cert, err := keyPair(k.file(s.SSLCert), k.file(s.SSLPrivateKey))
	if err != nil {
		return nil, fmt.Errorf("server certificate: %w", err)
	}
	pool, err := k.pool(s.SSLRootCert)
	if err != nil {
		return nil, err
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool, ClientAuth: auth, MinVersion: tls.VersionTLS12}, nil
}

// ServerIdentity is what a 2.4+ server signs in as: its certificate and
// key (RSA), and the project's root CA.
func (k *StartupKit) ServerIdentity() (certPEM []byte, key *rsa.PrivateKey, root *x509.Certificate, err error) {
	s := k.Servers[0]
	pair, err := keyPair(k.file(s.SSLCert), k.file(s.SSLPrivateKey))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("server certificate: %w", err)
	}
	key, ok := pair.PrivateKey.(*rsa.PrivateKey)
	if !ok {
		return nil, nil, nil, fmt.Errorf("%s: not an RSA key (NVFlare signs with RSA-PSS)", s.SSLPrivateKey)
	}
	certPEM, err = readPEM(k.file(s.SSLCert))
	if err != nil {
		return nil, nil, nil, err
	}
	rootPEM, err := readPEM(k.file(s.SSLRootCert))
	if err != nil {
		return nil, nil, nil, err
	}
	block, _ := pem.Decode(rootPEM)
	if block == nil {
		return nil, nil, nil, fmt.Errorf("%s: no PEM certificate", s.SSLRootCert)
	}
	if root, err = x509.ParseCertificate(block.Bytes); err != nil {
		return nil, nil, nil, fmt.Errorf("%s: %w", s.SSLRootCert, err)
	}
	return certPEM, key, root, nil
}

// JobStore is where the server's job store lives, as the kit's
// local/resources.json (or, without one, resources.json.default) sets
// it: the uri_root of its job_manager component. "" when the kit does not
// say.
func (k *StartupKit) JobStore() (string, error) {
	local := filepath.Join(filepath.Dir(k.Dir), "local")
	for _, name := range []string{"resources.json", "resources.json.default"} {
		p := filepath.Join(local, name)
		data, err := os.ReadFile(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return "", err
		}
		var res struct {
			Components []struct {
				ID   string `json:"id"`
				Args struct {
					URIRoot string `json:"uri_root"`
				} `json:"args"`
			} `json:"components"`
		}
		if err := json.Unmarshal(data, &res); err != nil {
			return "", fmt.Errorf("%s: %w", p, err)
		}
		for _, c := range res.Components {
			if c.ID == "job_manager" && c.Args.URIRoot != "" {
				if !filepath.IsAbs(c.Args.URIRoot) {
					return "", fmt.Errorf("%s: job_manager's uri_root %q is not an absolute path", p, c.Args.URIRoot)
				}
				return filepath.Clean(c.Args.URIRoot), nil
			}
		}
		return "", nil
	}
	return "", nil
}

// AdminKit is an NVFlare 2.4+ admin's startup/fed_admin.json: the user,
// the server to reach and the TLS files.
type AdminKit struct {
	Path  string `json:"-"`
	Dir   string `json:"-"`
	Admin struct {
		ProjectName        string `json:"project_name"`
		Username           string `json:"username"`
		ServerIdentity     string `json:"server_identity"`
		Scheme             string `json:"scheme"`
		Host               string `json:"host"`
		Port               int    `json:"port"`
		ConnectionSecurity string `json:"connection_security"`
		ClientKey          string `json:"client_key"`
		ClientCert         string `json:"client_cert"`
		CACert             string `json:"ca_cert"`
		DownloadDir        string `json:"download_dir"`
	} `json:"admin"`
}

// LoadAdminKit reads an admin's fed_admin.json.
func LoadAdminKit(path string) (*AdminKit, error) {
	k := &AdminKit{Path: path, Dir: filepath.Dir(path)}
	if err := readJSON(path, k); err != nil {
		return nil, err
	}
	a := &k.Admin
	if a.Username == "" || a.Host == "" || a.Port <= 0 || a.Port > 65535 {
		return nil, fmt.Errorf("%s: admin.username, admin.host and admin.port are required", path)
	}
	if a.ServerIdentity == "" {
		return nil, fmt.Errorf("%s: no admin.server_identity (an NVFlare 2.4+ admin kit names its server)", path)
	}
	if a.Scheme != "" && a.Scheme != "grpc" {
		return nil, fmt.Errorf("%s: scheme %q: flarego speaks NVFlare's gRPC driver only", path, LogCut(a.Scheme))
	}
	return k, nil
}

// SiteKit is the kit as a site's: the same server, TLS files and
// connection security, for the dialling code sites use.
func (k *AdminKit) SiteKit() *StartupKit {
	s := &StartupKit{Path: k.Path, Dir: k.Dir}
	s.Servers = make([]KitServer, 1)
	s.Servers[0].Name = k.Admin.ProjectName
	s.Servers[0].Service.Target = net.JoinHostPort(k.Admin.Host, strconv.Itoa(k.Admin.Port))
	s.Servers[0].Service.Scheme = "grpc"
	s.Servers[0].Identity = k.Admin.ServerIdentity
	s.Client.SSLCert, s.Client.SSLPrivateKey, s.Client.SSLRootCert = k.Admin.ClientCert, k.Admin.ClientKey, k.Admin.CACert
	s.Client.ConnectionSecurity = k.Admin.ConnectionSecurity
	s.hasClient = true
	return s
}
