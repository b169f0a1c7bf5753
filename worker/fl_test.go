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
	target := freeAddr(t)
	_, adminPort, _ := net.SplitHostPort(freeAddr(t))
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
 "admin_host": "127.0.0.1", "admin_port": %s, "ssl_private_key": "server.key", "ssl_cert": "server.crt", "ssl_root_cert": "rootCA.pem",
 "compression": "Gzip", "heart_beat_timeout": 600}]}`, target, adminPort))
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

// freeAddr is a loopback address with a port free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	return lis.Addr().String()
}

// The POC admin flow, twice on one server: an operator uploads the app,
// sets the run number, deploys it to the server and both clients, starts
// it and waits for the run; a second run follows on the same processes;
// shutdown all ends the clients and the server. In secure mode the
// console wants an admin certificate from the project's CA.
func TestAdminConsoleRunsTwoRuns(t *testing.T) {
	for _, secure := range []bool{false, true} {
		t.Run(map[bool]string{false: "poc", true: "secure"}[secure], func(t *testing.T) { adminFlow(t, secure) })
	}
}

func adminFlow(t *testing.T, secure bool) {
	dir := t.TempDir()
	td, _ := filepath.Abs(filepath.Join("..", "testdata"))
	key := filepath.Join(td, "fernet", "key.txt")
	target := freeAddr(t)
	_, adminPort, _ := net.SplitHostPort(freeAddr(t))
	job := writeJob(t, dir, key)
	os.Rename(job, filepath.Join(dir, "pneumonia"))
	ca := testpki.NewCA(t)
	tls := func(ws, cn, crt, key string) {
		if secure {
			ca.WriteRoot(t, filepath.Join(ws, "startup", "rootCA.pem"))
			ca.Issue(t, cn, filepath.Join(ws, "startup", crt), filepath.Join(ws, "startup", key))
		}
	}
	kit := func(name, file, content string) string {
		ws := filepath.Join(dir, name)
		os.MkdirAll(filepath.Join(ws, "startup"), 0o755)
		os.WriteFile(filepath.Join(ws, "startup", file), []byte(content), 0o644)
		return ws
	}
	srvWS := kit("server", "fed_server.json", fmt.Sprintf(`{"format_version": 2, "servers": [{"name": "example_project", "service": {"target": %q},
 "admin_host": "127.0.0.1", "admin_port": %s, "ssl_private_key": "server.key", "ssl_cert": "server.crt", "ssl_root_cert": "rootCA.pem", "heart_beat_timeout": 600}]}`, target, adminPort))
	tls(srvWS, "server", "server.crt", "server.key")
	var out bytes.Buffer
	set := fmt.Sprintf("secure_train=%v", secure)
	var sites []string
	for i := 1; i <= 2; i++ {
		ws := kit(fmt.Sprintf("site-%d", i), "fed_client.json", fmt.Sprintf(`{"format_version": 2, "servers": [{"name": "example_project", "service": {"target": %q}}],
 "client": {"ssl_private_key": "client.key", "ssl_cert": "client.crt", "ssl_root_cert": "rootCA.pem", "retry_timeout": 20}}`, target))
		tls(ws, fmt.Sprintf("site-%d", i), "client.crt", "client.key")
		run([]string{"samples", "--n", "2", "--seed", fmt.Sprint(i), filepath.Join(ws, "input")}, &out, &out)
		sites = append(sites, ws)
	}
	adminWS := kit("admin", "readme.txt", "")
	tls(adminWS, "admin@example.org", "client.crt", "client.key")
	os.MkdirAll(filepath.Join(dir, "output"), 0o755)

	var wg sync.WaitGroup
	outs := make([]syncBuffer, 3)
	rcs := make([]int, 3)
	wg.Add(1)
	go func() {
		defer wg.Done()
		rcs[0] = run([]string{"server", "-m", srvWS, "-s", "fed_server.json", "--key-file", key, "--output", filepath.Join(dir, "output"),
			"--set", set, "--set", "wait_time_after_min_received=0"}, &outs[0], &outs[0])
	}()
	for i, ws := range sites {
		wg.Add(1)
		go func(i int, ws string) {
			defer wg.Done()
			rcs[i+1] = run([]string{"client", "-m", ws, "-s", "fed_client.json", "--key-file", key, "--input", filepath.Join(ws, "input"),
				"--set", set, "--set", fmt.Sprintf("uid=site-%d", i+1)}, &outs[i+1], &outs[i+1])
		}(i, ws)
	}
	admin := func(cmds ...string) (string, int) {
		args := []string{"admin", "--host", "127.0.0.1", "--port", adminPort, "--upload_dir", dir}
		if secure {
			st := filepath.Join(adminWS, "startup")
			args = append(args, "--with_ssl", "--user", "admin@example.org", "--ca_cert", filepath.Join(st, "rootCA.pem"),
				"--client_cert", filepath.Join(st, "client.crt"), "--client_key", filepath.Join(st, "client.key"))
		}
		for _, c := range cmds {
			args = append(args, "-c", c)
		}
		var b bytes.Buffer
		rc := run(args, &b, &b)
		return b.String(), rc
	}
	// Wait for both clients to register.
	deadline := time.Now().Add(20 * time.Second)
	for {
		o, rc := admin("check_status server")
		if rc == 0 && strings.Contains(o, "Registered clients: 2") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("clients did not register: %d\n%s\nserver:\n%s", rc, o, outs[0].String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	if o, rc := admin("start_app all"); rc == 0 || !strings.Contains(o, "Please set a run number.") {
		t.Fatalf("start before set_run_number: exit %d\n%s", rc, o)
	}
	for run := 1; run <= 2; run++ {
		o, rc := admin("upload_app pneumonia", fmt.Sprintf("set_run_number %d", run), "deploy_app pneumonia all", "start_app all", "wait_run", "check_status client")
		if rc != 0 {
			t.Fatalf("run %d: exit %d\n%s\nserver:\n%s", run, rc, o, outs[0].String())
		}
		for _, want := range []string{"Created folder", `deployed app "pneumonia" to Server`, "Server app is starting", "site-1", "site-2", "Start the client app...", "server app stopped"} {
			if !strings.Contains(o, want) {
				t.Fatalf("run %d: no %q in\n%s", run, want, o)
			}
		}
		if _, err := os.Stat(filepath.Join(sites[0], fmt.Sprintf("run_%d", run), "app_site-1", "custom", "network.json.enc")); err != nil {
			t.Fatalf("run %d: the app was not deployed to site-1: %v", run, err)
		}
		t.Logf("run %d:\n%s", run, o)
	}
	if n := strings.Count(outs[0].String(), "round 1/1 done: aggregated 2 result(s)"); n != 2 {
		t.Fatalf("%d aggregated rounds, want 2:\n%s", n, outs[0].String())
	}
	if o, rc := admin("shutdown server"); rc == 0 || !strings.Contains(o, "still active clients") {
		t.Fatalf("shutdown server with clients: exit %d\n%s", rc, o)
	}
	if o, rc := admin("shutdown all"); rc != 0 || !strings.Contains(o, "Shutdown the client...") {
		t.Fatalf("shutdown all: exit %d\n%s", rc, o)
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatalf("processes still running after shutdown all:\nserver:\n%s\nsite-1:\n%s", outs[0].String(), outs[1].String())
	}
	for i, rc := range rcs {
		if rc != 0 {
			t.Fatalf("process %d exited %d:\n%s", i, rc, outs[i].String())
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "output", "model_parameters.pt.enc")); err != nil {
		t.Fatal(err)
	}
}

// syncBuffer is a bytes.Buffer safe for a process writing while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
