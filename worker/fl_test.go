package main

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flarego/flarego/internal/testpki"
)

// writeJob makes DIR/job: the pneumonia job's configs and its spec
// encrypted with key, as a deployment holds them.
func writeJob(t *testing.T, dir, key string) string {
	t.Helper()
	job := filepath.Join(dir, "job")
	os.MkdirAll(filepath.Join(job, "config"), 0o755)
	os.MkdirAll(filepath.Join(job, "custom"), 0o755)
	for _, f := range []string{"config_fed_server.json", "config_fed_client.json"} {
		b, err := os.ReadFile(filepath.Join("..", "job", "pneumonia", "config", f))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(job, "config", f), b, 0o644)
	}
	var out bytes.Buffer
	spec, _ := filepath.Abs(filepath.Join("..", "testdata", "pneumonia_spec.json"))
	if rc := run([]string{"encrypt", spec, key, filepath.Join(job, "custom", "network.json.enc")}, &out, &out); rc != 0 {
		t.Fatal(out.String())
	}
	return job
}

// The server and two clients as separate commands from NVFlare-style
// startup kits, with mutual TLS; a client whose certificate another CA
// signed is refused.
func TestServerAndClientsWithMutualTLS(t *testing.T) {
	dir := t.TempDir()
	td, _ := filepath.Abs(filepath.Join("..", "testdata"))
	key := filepath.Join(td, "fernet", "key.txt")
	lis, _ := net.Listen("tcp", "127.0.0.1:0")
	target := lis.Addr().String()
	lis.Close()
	ca := testpki.NewCA(t)
	job := writeJob(t, dir, key)
	var out bytes.Buffer
	kit := func(name, content string) string {
		ws := filepath.Join(dir, name)
		os.MkdirAll(filepath.Join(ws, "startup"), 0o755)
		os.WriteFile(filepath.Join(ws, "startup", "fed_"+map[bool]string{true: "server", false: "client"}[name == "server"]+".json"), []byte(content), 0o644)
		return ws
	}
	srvWS := kit("server", fmt.Sprintf(`{"format_version": 2, "servers": [{"name": "example_project", "service": {"target": %q},
 "admin_host": "localhost", "admin_port": 8003, "ssl_private_key": "server.key", "ssl_cert": "server.crt", "ssl_root_cert": "rootCA.pem",
 "compression": "Gzip", "heart_beat_timeout": 600}]}`, target))
	ca.WriteRoot(t, filepath.Join(srvWS, "startup", "rootCA.pem"))
	ca.Issue(t, "server", filepath.Join(srvWS, "startup", "server.crt"), filepath.Join(srvWS, "startup", "server.key"))
	clientKit := fmt.Sprintf(`{"format_version": 2, "servers": [{"name": "example_project", "service": {"target": %q}}],
 "client": {"ssl_private_key": "client.key", "ssl_cert": "client.crt", "ssl_root_cert": "rootCA.pem", "compression": "Gzip", "retry_timeout": 20}}`, target)
	var sites []string
	for i := 1; i <= 2; i++ {
		ws := kit(fmt.Sprintf("site-%d", i), clientKit)
		ca.WriteRoot(t, filepath.Join(ws, "startup", "rootCA.pem"))
		ca.Issue(t, fmt.Sprintf("site-%d", i), filepath.Join(ws, "startup", "client.crt"), filepath.Join(ws, "startup", "client.key"))
		run([]string{"samples", "--n", "2", "--seed", fmt.Sprint(i), filepath.Join(ws, "input")}, &out, &out)
		sites = append(sites, ws)
	}
	rogue := kit("rogue", clientKit)
	other := testpki.NewCA(t)
	ca.WriteRoot(t, filepath.Join(rogue, "startup", "rootCA.pem"))
	other.Issue(t, "rogue", filepath.Join(rogue, "startup", "client.crt"), filepath.Join(rogue, "startup", "client.key"))

	os.MkdirAll(filepath.Join(dir, "output"), 0o755)
	var wg sync.WaitGroup
	outs := make([]bytes.Buffer, 3)
	rcs := make([]int, 3)
	wg.Add(1)
	go func() {
		defer wg.Done()
		rcs[0] = run([]string{"server", "-m", srvWS, "-s", "fed_server.json", "--job", job, "--key-file", key, "--output", filepath.Join(dir, "output"),
			"--set", "secure_train=true", "--set", "wait_time_after_min_received=0"}, &outs[0], &outs[0])
	}()
	for i, ws := range sites {
		wg.Add(1)
		go func(i int, ws string) {
			defer wg.Done()
			args := []string{"client", "-m", ws, "-s", "fed_client.json", "--key-file", key, "--input", filepath.Join(ws, "input"),
				"--set", "secure_train=true", "--set", fmt.Sprintf("uid=site-%d", i+1)}
			if i == 0 {
				args = append(args, "--job", job) // the other site waits for the server to deploy the app
			}
			rcs[i+1] = run(args, &outs[i+1], &outs[i+1])
		}(i, ws)
		time.Sleep(50 * time.Millisecond)
	}
	// The rogue client cannot complete a TLS handshake.
	var rogueOut bytes.Buffer
	time.Sleep(200 * time.Millisecond)
	rogueRC := run([]string{"client", "-m", rogue, "-s", "fed_client.json", "--job", job, "--key-file", key, "--input", filepath.Join(dir, "none"),
		"--set", "secure_train=true", "--set", "uid=rogue"}, &rogueOut, &rogueOut)
	wg.Wait()
	for i, rc := range rcs {
		if rc != 0 {
			t.Fatalf("process %d exited %d:\n%s", i, rc, outs[i].String())
		}
	}
	if !strings.Contains(outs[0].String(), "round 1/1 done: aggregated 2 result(s)") {
		t.Fatalf("server log:\n%s", outs[0].String())
	}
	if !strings.Contains(outs[2].String(), "deployed app job to") {
		t.Fatalf("site-2 was not deployed through the admin channel:\n%s", outs[2].String())
	}
	if rogueRC == 0 || !strings.Contains(rogueOut.String(), "TLS") {
		t.Fatalf("a client with a foreign certificate: exit %d\n%s", rogueRC, rogueOut.String())
	}
	t.Logf("rogue client: %s", strings.TrimSpace(rogueOut.String()))
	if _, err := os.Stat(filepath.Join(dir, "output", "model_parameters.pt.enc")); err != nil {
		t.Fatal(err)
	}
}
