package bench

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/flarego/flarego/fcp"
	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/cellnet/deploy"
	"github.com/flarego/flarego/flare/cellnet/msgpk"
	"github.com/flarego/flarego/flare/cellnet/register"
	"github.com/flarego/flarego/flare/cellnet/serverwire"
	"github.com/flarego/flarego/flare/server"
	"github.com/flarego/flarego/flare/site"
	"github.com/flarego/flarego/model"
	"github.com/flarego/flarego/persistor"
	"github.com/flarego/flarego/pneumonia"
)

// FL28 is FL over NVFlare 2.4+'s wire: the server (a child process, for
// its peak RSS) runs one ScatterAndGather round for clients flarego sites
// in this process, registered with a project PKI made for the run, the
// app deployed signed; tasks go to the sites and results come back as
// array downloads.
func FL28(env Env, clients int) error {
	return flRound(env, "fl28-server", fmt.Sprintf("NVFlare 2.4+ wire (CellNet, mutual authentication, arrays by download), %d flarego sites on loopback", clients),
		clients, func(dir, addr string) (func(context.Context, int) error, error) {
			kits, err := writeProject(dir, addr, clients)
			if err != nil {
				return nil, err
			}
			return func(ctx context.Context, i int) error {
				s := &site.Site{Name: fmt.Sprintf("site-%d", i+1), Kit: kits[i], Workspace: filepath.Dir(kits[i].Dir), Secure: true, GiveUp: time.Minute,
					Heartbeat: 10 * time.Second, Tasks: func(string) (map[string]flare.Executor, error) {
						return map[string]flare.Executor{"train": perturb{seed: uint64(i)}}, nil
					}}
				return s.Run(ctx)
			}, nil
		})
}

// writeProject writes a project PKI (root, server1, one key shared by the
// sites to save minutes of key generation) and the sites' 2.4+ kits.
func writeProject(dir, addr string, n int) ([]*flare.StartupKit, error) {
	rootKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	rootTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "root"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	rootDER, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, &rootKey.PublicKey, rootKey)
	if err != nil {
		return nil, err
	}
	root, _ := x509.ParseCertificate(rootDER)
	rootPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: rootDER})
	leaf := func(sub string, cn string, key *rsa.PrivateKey) error {
		d := filepath.Join(dir, sub)
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, root, &key.PublicKey, rootKey)
		if err != nil {
			return err
		}
		for name, b := range map[string][]byte{"cert.pem": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
			"key.pem":    pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}),
			"rootCA.pem": rootPEM} {
			if err := os.WriteFile(filepath.Join(d, name), b, 0o600); err != nil {
				return err
			}
		}
		return nil
	}
	serverKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	if err := leaf("server", "server1", serverKey); err != nil {
		return nil, err
	}
	siteKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	var kits []*flare.StartupKit
	for i := 1; i <= n; i++ {
		name := fmt.Sprintf("site-%d", i)
		sub := filepath.Join(name, "startup")
		if err := leaf(sub, name, siteKey); err != nil {
			return nil, err
		}
		b, _ := json.Marshal(map[string]any{"format_version": 2,
			"servers": []any{map[string]any{"name": "bench", "service": map[string]any{"target": addr, "scheme": "grpc"}, "identity": "server1"}},
			"client":  map[string]any{"ssl_private_key": "key.pem", "ssl_cert": "cert.pem", "ssl_root_cert": "rootCA.pem", "connection_security": "clear"}})
		p := filepath.Join(dir, sub, "fed_client.json")
		if err := os.WriteFile(p, b, 0o600); err != nil {
			return nil, err
		}
		k, err := flare.LoadStartupKit(p)
		if err != nil {
			return nil, err
		}
		kits = append(kits, k)
	}
	return kits, nil
}

// fl28Server is FL28's child: a 2.4+ server for n sites, one round.
func fl28Server(args []string, stdout io.Writer) error {
	if len(args) != 3 {
		return fmt.Errorf("%w: bench --child fl28-server ADDR N DIR", ErrUsage)
	}
	n, err := strconv.Atoi(args[1])
	if err != nil {
		return err
	}
	dir := args[2]
	read := os.ReadFile
	id, err := register.LoadIdentity("server1", "bench", filepath.Join(dir, "server", "cert.pem"), filepath.Join(dir, "server", "key.pem"),
		filepath.Join(dir, "server", "rootCA.pem"), "server1", read)
	if err != nil {
		return err
	}
	app := filepath.Join(dir, "app")
	if err := os.MkdirAll(filepath.Join(app, "config"), 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(app, "config", "config_fed_client.json"), []byte(`{"format_version": 2, "executors": []}`), 0o600); err != nil {
		return err
	}
	zip, err := deploy.SignedZip(app, id.Key, id.CertPEM)
	if err != nil {
		return err
	}
	srv, modelBytes, err := benchServer(n, filepath.Join(dir, "output"))
	if err != nil {
		return err
	}
	srv.Wire = &serverwire.Wire{JobID: flare.NewUUID(), App: zip, Meta: msgpk.Map{{Key: "name", Value: "bench"}},
		Registrar: &register.Registrar{Name: "server1", CertPEM: id.CertPEM, Key: id.Key, Root: id.Root, MaxSites: n + 16}}
	return serveRound(srv, args[0], modelBytes, stdout)
}

// benchServer is the one-round pneumonia server of bench fl for n
// clients; modelBytes is set once its persistor made the model.
func benchServer(n int, output string) (*server.Server, *int64, error) {
	k, err := persistor.GenerateKey()
	if err != nil {
		return nil, nil, err
	}
	spec := model.PneumoniaSpec()
	modelBytes := new(int64)
	reg := &flare.Registry{Persistors: map[string]func(json.RawMessage) (flare.ModelPersistor, error){
		pneumonia.PathPersistor: func(json.RawMessage) (flare.ModelPersistor, error) {
			return &persistor.SecuredPersistor{Path: (fcp.Locations{Output: output}).GlobalModel(), Key: k, ModelName: spec.Name,
				Init: func() (*persistor.StateDict, error) {
					sd, err := model.Init(spec, 1)
					if err == nil {
						*modelBytes = sd.Bytes()
					}
					return sd, err
				}}, nil
		}}}
	if err := os.MkdirAll(output, 0o700); err != nil {
		return nil, nil, err
	}
	var cfg flare.ServerConfig
	raw := fmt.Sprintf(`{"format_version": 2, "components": [
 {"id": "persistor", "path": %q, "args": {}},
 {"id": "shareable_generator", "path": %q, "args": {}},
 {"id": "aggregator", "path": %q, "args": {}}],
 "workflows": [{"id": "sag", "path": %q, "args": {"min_clients": %d, "num_rounds": 1, "wait_time_after_min_received": 0}}]}`,
		pneumonia.PathPersistor, flare.PathFullModelGenerator, flare.PathWeightedAggregator, flare.PathScatterAndGather, n)
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		return nil, nil, err
	}
	srv, err := server.New(&cfg, reg)
	return srv, modelBytes, err
}

// serveRound serves srv on addr until its round is done and prints the
// round's time and the model's size as JSON.
func serveRound(srv *server.Server, addr string, modelBytes *int64, stdout io.Writer) error {
	var roundStart time.Time
	var roundSeconds float64
	srv.Logf = func(format string, a ...any) {
		msg := fmt.Sprintf(format, a...)
		switch {
		case len(msg) > 7 && msg[:7] == "round 1" && roundStart.IsZero():
			roundStart = time.Now()
		case len(msg) > 12 && msg[:12] == "round 1/1 do":
			roundSeconds = time.Since(roundStart).Seconds()
		}
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	if err := srv.Serve(context.Background(), lis); err != nil {
		return err
	}
	return json.NewEncoder(stdout).Encode(map[string]any{"round_seconds": roundSeconds, "model_bytes": *modelBytes, "peak_rss_kb": peakRSS()})
}

// peakRSS is this process's peak resident set (VmHWM) in KiB, or 0. The
// parent's rusage of a child is no measure when the parent is large: Go
// starts children with vfork, and the child's maxrss then counts the
// parent's memory until exec; VmHWM belongs to the exec'd image alone.
func peakRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var kb int64
			fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), &kb)
			return kb
		}
	}
	return 0
}
