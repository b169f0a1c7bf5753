package serverwire

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/cellnet/cell"
	"github.com/flarego/flarego/flare/cellnet/conn"
	"github.com/flarego/flarego/flare/cellnet/deploy"
	"github.com/flarego/flarego/flare/cellnet/msgpk"
	"github.com/flarego/flarego/flare/cellnet/register"
	"github.com/flarego/flarego/flare/internal/celltest"
	"github.com/flarego/flarego/flare/internal/flaretest"
	"github.com/flarego/flarego/flare/np"
	"github.com/flarego/flarego/flare/server"
	"github.com/flarego/flarego/flare/site"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// siteKit writes a site's 2.8 kit for a server at target.
func siteKit(t *testing.T, p *celltest.PKI, name, target string) *flare.StartupKit {
	dir := filepath.Join(t.TempDir(), name, "startup")
	os.MkdirAll(dir, 0o755)
	cert, key := p.Leaf(t, name)
	os.WriteFile(filepath.Join(dir, "client.crt"), cert, 0o600)
	os.WriteFile(filepath.Join(dir, "client.key"), pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600)
	os.WriteFile(filepath.Join(dir, "rootCA.pem"), p.RootPEM(), 0o600)
	kit, _ := json.Marshal(map[string]any{"format_version": 2,
		"servers": []any{map[string]any{"name": "proj", "service": map[string]any{"target": target, "scheme": "grpc"}, "identity": "server1"}},
		"client":  map[string]any{"ssl_private_key": "client.key", "ssl_cert": "client.crt", "ssl_root_cert": "rootCA.pem", "connection_security": "clear"}})
	os.WriteFile(filepath.Join(dir, "fed_client.json"), kit, 0o600)
	k, err := flare.LoadStartupKit(filepath.Join(dir, "fed_client.json"))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// hello-numpy-sag on flarego's server runtime over the CellNet wire, with
// two flarego sites in secure mode over loopback gRPC: each site registers,
// is deployed the signed app and started, trains 3 rounds of NPTrainer,
// and the saved model is [[4,5,6],[7,8,9],[10,11,12]]; then the sites are
// shut down.
func TestHelloNumpyOnOurServer(t *testing.T) {
	p := celltest.NewPKI(t)
	certPEM, key := p.Leaf(t, "server1")
	app := filepath.Join(t.TempDir(), "app", "config")
	os.MkdirAll(app, 0o755)
	os.WriteFile(filepath.Join(app, "config_fed_client.json"), []byte(`{"format_version": 2,
  "executors": [{"tasks": ["train"], "executor": {"path": "nvflare.app_common.np.np_trainer.NPTrainer", "args": {}}}]}`), 0o600)
	zip, err := deploy.SignedZip(filepath.Dir(app), key, certPEM)
	if err != nil {
		t.Fatal(err)
	}
	runDir := t.TempDir()
	cfg := flaretest.ServerConfig(2, 3, 0)
	cfg.Components[0].Path = np.PersistorPath
	reg := &flare.Registry{}
	np.RegisterPersistor(reg, runDir)
	srv, err := server.New(cfg, reg)
	if err != nil {
		t.Fatal(err)
	}
	log := &flaretest.Log{T: t}
	srv.Logf = log.Logf
	srv.Wire = &Wire{Registrar: &register.Registrar{Name: "server1", CertPEM: certPEM, Key: key, Root: p.Root},
		JobID: "job1", App: zip, Meta: msgpk.Map{{Key: "name", Value: "hello-numpy-sag"}, {Key: "job_id", Value: "job1"}}, Logf: log.Logf}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, lis) }()
	sites := make(chan error, 2)
	for _, name := range []string{"site-1", "site-2"} {
		kit := siteKit(t, p, name, lis.Addr().String())
		s := &site.Site{Name: name, Kit: kit, Workspace: filepath.Dir(kit.Dir), Secure: true, Logf: log.Logf, GiveUp: 10 * time.Second,
			Tasks: func(dir string) (map[string]flare.Executor, error) {
				ex, err := np.New(nil)
				return map[string]flare.Executor{"train": ex}, err
			}}
		go func() { sites <- s.Run(ctx) }()
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := <-sites; err != nil {
			t.Fatalf("a site: %v", err)
		}
	}
	c, err := (&np.Persistor{Path: filepath.Join(runDir, "models", "server.npy")}).Load()
	if err != nil {
		t.Fatal(err)
	}
	got, _ := c.Model.Get(np.Key).Float32s()
	want := []float32{4, 5, 6, 7, 8, 9, 10, 11, 12}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("global model %v, want %v\n%s", got, want, strings.Join(log.Lines(), "\n"))
		}
	}
}

// A hundred sites dial the hub over loopback gRPC and register at once
// (challenge, register, token); every one gets in, and the hub lists
// them online once each has heartbeated.
func TestHundredSitesRegisterAtOnce(t *testing.T) {
	p := celltest.NewPKI(t)
	certPEM, key := p.Leaf(t, "server1")
	hub := &Hub{Registrar: &register.Registrar{Name: "server1", CertPEM: certPEM, Key: key, Root: p.Root}}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	go hub.Serve(ctx, lis)
	const n = 100
	siteKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	ids := make([]*register.Identity, n)
	for i := range ids {
		name := fmt.Sprintf("site-%03d", i)
		ids[i] = &register.Identity{Name: name, Project: "proj", CertPEM: p.LeafWithKey(t, name, siteKey), Key: siteKey, Root: p.Root, ServerIdentity: "server1"}
	}
	start := time.Now()
	errs := make(chan error, n)
	for _, id := range ids {
		go func() {
			cn, err := conn.Dial(ctx, lis.Addr().String(), id.Name, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				errs <- err
				return
			}
			c := cell.New(cn, id.Name)
			if _, err := register.Register(ctx, c, id, ""); err != nil {
				errs <- fmt.Errorf("%s: %w", id.Name, err)
				return
			}
			_, err = register.Heartbeat(ctx, c, id, nil)
			errs <- err
		}()
	}
	for range ids {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d sites registered and heartbeated in %s", n, time.Since(start).Round(time.Millisecond))
	if got := len(hub.Online()); got != n {
		t.Fatalf("%d sites online, want %d", got, n)
	}
}
