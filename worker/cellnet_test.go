package main

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/flarego/flarego/flare/npy"
)

// project28 writes an NVFlare 2.4+ project in miniature: a root CA, the
// server's kit (server1, on localhost:port) and sites' kits, as
// provisioning does.
func project28(t *testing.T, port int, sec string, sites ...string) (serverKit string, siteKits []string) {
	t.Helper()
	return project28On(t, "localhost", port, sec, sites...)
}

// project28On is project28 with the server at host:port (its certificate
// names host).
func project28On(t *testing.T, host string, port int, sec string, sites ...string) (serverKit string, siteKits []string) {
	t.Helper()
	rootKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	rootTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "root"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	rootDER, _ := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, &rootKey.PublicKey, rootKey)
	root, _ := x509.ParseCertificate(rootDER)
	rootPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: rootDER})
	leafAs := func(dir string, subject pkix.Name, certName, keyName string, hosts ...string) {
		key, _ := rsa.GenerateKey(rand.Reader, 2048)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: subject, DNSNames: hosts,
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, root, &key.PublicKey, rootKey)
		if err != nil {
			t.Fatal(err)
		}
		os.MkdirAll(dir, 0o755)
		os.WriteFile(filepath.Join(dir, certName), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
		os.WriteFile(filepath.Join(dir, keyName), pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600)
		os.WriteFile(filepath.Join(dir, "rootCA.pem"), rootPEM, 0o600)
	}
	leaf := func(dir, cn, certName, keyName string, hosts ...string) {
		leafAs(dir, pkix.Name{CommonName: cn}, certName, keyName, hosts...)
	}
	base := t.TempDir()
	target := net.JoinHostPort(host, fmt.Sprint(port))
	sdir := filepath.Join(base, "server1", "startup")
	leaf(sdir, "server1", "server.crt", "server.key", host)
	b, _ := json.Marshal(map[string]any{"format_version": 2, "servers": []any{map[string]any{"name": "proj",
		"service": map[string]any{"target": target, "scheme": "grpc"}, "admin_server": "server1", "admin_port": port,
		"ssl_private_key": "server.key", "ssl_cert": "server.crt", "ssl_root_cert": "rootCA.pem", "connection_security": sec}}})
	os.WriteFile(filepath.Join(sdir, "fed_server.json"), b, 0o600)
	for _, s := range sites {
		dir := filepath.Join(base, s, "startup")
		leaf(dir, s, "client.crt", "client.key")
		b, _ := json.Marshal(map[string]any{"format_version": 2,
			"servers": []any{map[string]any{"name": "proj", "service": map[string]any{"target": target, "scheme": "grpc"}, "identity": "server1"}},
			"client":  map[string]any{"ssl_private_key": "client.key", "ssl_cert": "client.crt", "ssl_root_cert": "rootCA.pem", "fqsn": s, "is_leaf": true, "connection_security": sec}})
		os.WriteFile(filepath.Join(dir, "fed_client.json"), b, 0o600)
		siteKits = append(siteKits, filepath.Dir(dir))
	}
	// The project admin's kit, base/admin@nvidia.com (its role in the
	// certificate's unstructuredName, as NVFlare provisions it).
	adir := filepath.Join(base, "admin@nvidia.com", "startup")
	leafAs(adir, pkix.Name{CommonName: "admin@nvidia.com", Organization: []string{"nvidia"},
		ExtraNames: []pkix.AttributeTypeAndValue{{Type: []int{1, 2, 840, 113549, 1, 9, 2}, Value: "project_admin"}}}, "client.crt", "client.key")
	b, _ = json.Marshal(map[string]any{"format_version": 1, "admin": map[string]any{"project_name": "proj", "username": "admin@nvidia.com",
		"server_identity": "server1", "scheme": "grpc", "host": host, "port": port, "connection_security": sec,
		"download_dir": "transfer", "client_key": "client.key", "client_cert": "client.crt", "ca_cert": "rootCA.pem"}})
	os.WriteFile(filepath.Join(adir, "fed_admin.json"), b, 0o600)
	return filepath.Dir(sdir), siteKits
}

// hello-numpy-sag with flarego's server and two flarego sites, each from
// its NVFlare 2.4+ kit, with the commands start.sh would run, over
// mutual TLS: the job finishes and the saved model is the expected one.
func TestHelloNumpyOnNVFlare28Kits(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	serverKit, sites := project28(t, port, "mtls", "site-1", "site-2")
	job := filepath.Join(t.TempDir(), "hello-numpy-sag")
	os.MkdirAll(filepath.Join(job, "config"), 0o755)
	os.WriteFile(filepath.Join(job, "config", "config_fed_server.json"), []byte(`{"format_version": 2, "server": {"heart_beat_timeout": 600},
 "components": [{"id": "persistor", "path": "nvflare.app_common.np.np_model_persistor.NPModelPersistor", "args": {}},
  {"id": "shareable_generator", "path": "nvflare.app_common.shareablegenerators.full_model_shareable_generator.FullModelShareableGenerator", "args": {}},
  {"id": "aggregator", "path": "nvflare.app_common.aggregators.intime_accumulate_model_aggregator.InTimeAccumulateWeightedAggregator", "args": {"expected_data_kind": "WEIGHTS"}}],
 "workflows": [{"id": "scatter_and_gather", "path": "nvflare.app_common.workflows.scatter_and_gather.ScatterAndGather",
  "args": {"min_clients": 2, "num_rounds": 3, "start_round": 0, "wait_time_after_min_received": 0, "aggregator_id": "aggregator",
   "persistor_id": "persistor", "shareable_generator_id": "shareable_generator", "train_task_name": "train", "train_timeout": 0}}]}`), 0o600)
	os.WriteFile(filepath.Join(job, "config", "config_fed_client.json"), []byte(`{"format_version": 2,
 "executors": [{"tasks": ["train"], "executor": {"path": "nvflare.app_common.np.np_trainer.NPTrainer", "args": {}}}]}`), 0o600)
	t.Setenv("FLAREGO_OUTPUT", t.TempDir())

	var wg sync.WaitGroup
	outs := make([]bytes.Buffer, 3)
	rcs := make([]int, 3)
	wg.Add(1)
	go func() {
		defer wg.Done()
		rcs[0] = run([]string{"server", "-m", serverKit, "-s", "fed_server.json", "--set", "secure_train=true", "config_folder=config", "--job", job}, &outs[0], &outs[0])
	}()
	for i, kit := range sites {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := filepath.Base(kit)
			rcs[i+1] = run([]string{"client", "-m", kit, "-s", "fed_client.json", "--set", "secure_train=true", "uid=" + name, "org=nvidia", "config_folder=config"}, &outs[i+1], &outs[i+1])
		}()
	}
	wg.Wait()
	for i, rc := range rcs {
		if rc != 0 {
			t.Fatalf("process %d: exit %d\n%s\n%s\n%s", i, rc, outs[0].String(), outs[1].String(), outs[2].String())
		}
	}
	matches, _ := filepath.Glob(filepath.Join(serverKit, "*", "models", "server.npy"))
	if len(matches) != 1 {
		t.Fatalf("saved models %v\n%s", matches, outs[0].String())
	}
	b, _ := os.ReadFile(matches[0])
	m, err := npy.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := m.Float32s()
	if fmt.Sprint(m.Shape, got) != "[3 3] [4 5 6 7 8 9 10 11 12]" {
		t.Fatalf("global model %v %v", m.Shape, got)
	}
	t.Logf("server:\n%s", outs[0].String())
}
