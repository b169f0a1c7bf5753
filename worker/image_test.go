package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// dockerEngine answers whether a Docker engine is there. Without one the
// image tests say so and skip; under CI=true that is a failure unless
// FLAREGO_NO_DOCKER=1 records that CI itself found none and said so.
func dockerEngine(t *testing.T) {
	t.Helper()
	if err := exec.Command("docker", "info").Run(); err == nil {
		return
	}
	const msg = "SKIPPED: no Docker engine (docker info does not answer)"
	if os.Getenv("CI") == "true" && os.Getenv("FLAREGO_NO_DOCKER") != "1" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// docker runs docker with args and returns its output and error.
func docker(args ...string) (string, error) {
	var out bytes.Buffer
	cmd := exec.Command("docker", args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// make image builds without pulling, then the image runs as FCP runs it:
// read-only root, user 5642, no network, the key mounted read-only. It
// writes nothing outside what is mounted; a wrong key stops it with a
// clear error before the command runs; the image holds no key and no
// plaintext architecture.
func TestImageBuildsAndRunsAsFCP(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the image")
	}
	dockerEngine(t)
	dir := t.TempDir()
	var out bytes.Buffer
	for _, k := range []string{"creds/secret_run_params.json", "wrong/secret_run_params.json"} {
		os.MkdirAll(filepath.Join(dir, filepath.Dir(k)), 0o755)
		if rc := run([]string{"keygen", filepath.Join(dir, k)}, &out, &out); rc != 0 {
			t.Fatalf("keygen: %s", out.String())
		}
		os.Chmod(filepath.Join(dir, k), 0o644) // readable by user 5642 in the container
	}
	image := fmt.Sprintf("flarego-test:%d", time.Now().UnixNano())
	build := exec.Command("../scripts/image.sh", filepath.Join(dir, "creds", "secret_run_params.json"), "", image)
	b, err := build.CombinedOutput()
	if err != nil {
		t.Fatalf("scripts/image.sh: %v\n%s", err, b)
	}
	t.Cleanup(func() { docker("rmi", "-f", image) })
	t.Logf("%s", strings.TrimSpace(string(b)))

	size, _ := docker("image", "inspect", "--format", "{{.Size}} {{.Config.User}} {{index .Config.Labels \"org.opencontainers.image.version\"}}", image)
	var n int64
	var user, version string
	fmt.Sscan(size, &n, &user, &version)
	t.Logf("image %s: %.1f MB, user %s, version %s", image, float64(n)/1e6, user, version)
	// The image is the binary, built without Gorgonia, the report and
	// gRPC's tracing (≈ 13.7 MB), and the job's configs.
	if n > 15e6 {
		t.Errorf("image is %d bytes, over 15 MB", n)
	}
	if user != "5642:5642" || version == "" {
		t.Errorf("user %q, version label %q", user, version)
	}

	// Run it as FCP would, without --rm, so that docker diff can look.
	fcp := func(name, creds string, cmd ...string) (string, error) {
		args := []string{"create", "--name", name, "--read-only", "--user", "5642", "--network", "none",
			"-v", filepath.Join(dir, creds) + ":/server-credentials:ro", image}
		if o, err := docker(append(args, cmd...)...); err != nil {
			t.Fatalf("docker create: %v\n%s", err, o)
		}
		t.Cleanup(func() { docker("rm", "-f", name) })
		return docker("start", "-a", name)
	}
	name := strings.ReplaceAll(image, ":", "-")
	start := time.Now()
	o, err := fcp(name+"-ok", "creds", "/flarego", "help")
	t.Logf("unseal + help: %v", time.Since(start).Round(time.Millisecond))
	if err != nil || !strings.Contains(o, "ok /app/custom/network.json.enc") || !strings.Contains(o, "usage: flarego") {
		t.Fatalf("the image with the right key: %v\n%s", err, o)
	}
	d, _ := docker("diff", name+"-ok")
	for _, l := range strings.Split(strings.TrimSpace(d), "\n") {
		// The engine makes the mount point; nothing else may change.
		if l != "" && l != "A /server-credentials" {
			t.Errorf("the container changed its file system: %s", l)
		}
	}
	o, err = fcp(name+"-wrong", "wrong", "/flarego", "help")
	if err == nil || strings.Contains(o, "usage: flarego") || !strings.Contains(o, "network.json.enc") {
		t.Errorf("the image with the wrong key ran or did not name the file: %v\n%s", err, o)
	}
	t.Logf("wrong key: %s", strings.TrimSpace(o))

	// NVFlare's command line runs flarego's client (here it stops at the
	// missing kit, naming it); an unknown command is refused naming it.
	o, _ = fcp(name+"-nvflare", "creds", "python3", "-u", "-m", "nvflare.private.fed.app.client.client_train", "-m", "/workspace", "-s", "fed_client.json", "--set", "uid=site-1")
	if !strings.Contains(o, "running flarego client -m /workspace") || !strings.Contains(o, "/workspace/startup/fed_client.json") {
		t.Errorf("NVFlare's client_train command line:\n%s", o)
	}
	o, err = fcp(name+"-ls", "creds", "ls", "/")
	if err == nil || !strings.Contains(o, `command "ls /": not a command this image runs`) {
		t.Errorf("an unknown command: %v\n%s", err, o)
	}

	// The seed's inference command, as FCP runs it: no network, /input
	// read-only, the job's encrypted architecture, the scores in /output
	// and nothing in plaintext but them.
	input, output := filepath.Join(dir, "input"), filepath.Join(dir, "output")
	os.MkdirAll(output, 0o777)
	os.Chmod(output, 0o777)
	key := filepath.Join(dir, "creds", "secret_run_params.json")
	for _, args := range [][]string{
		{"samples", "--n", "2", input},
		{"train", "--epochs", "1", "--input", input, "--output", input, "--key-file", key},
	} {
		if rc := run(args, &out, &out); rc != 0 {
			t.Fatalf("flarego %v: %s", args, out.String())
		}
	}
	filepath.WalkDir(input, func(p string, d os.DirEntry, err error) error {
		if err == nil {
			os.Chmod(p, 0o755) // readable by user 5642
		}
		return nil
	})
	args := []string{"create", "--name", name + "-infer", "--read-only", "--user", "5642", "--network", "none",
		"-v", filepath.Join(dir, "creds") + ":/server-credentials:ro", "-v", input + ":/input:ro", "-v", output + ":/output",
		image, "python3", "infer.py", "/input/model_parameters.pt.enc"}
	if o, err := docker(args...); err != nil {
		t.Fatalf("docker create: %v\n%s", err, o)
	}
	t.Cleanup(func() { docker("rm", "-f", name+"-infer") })
	start = time.Now()
	o, err = docker("start", "-a", name+"-infer")
	t.Logf("inference in the container: %v", time.Since(start).Round(time.Millisecond))
	if err != nil || !strings.Contains(o, "running flarego infer") {
		t.Fatalf("python3 infer.py in the image: %v\n%s", err, o)
	}
	d, _ = docker("diff", name+"-infer")
	for _, l := range strings.Split(strings.TrimSpace(d), "\n") {
		if l != "" && l != "A /server-credentials" && l != "A /input" && l != "A /output" {
			t.Errorf("inference changed the container's file system: %s", l)
		}
	}
	scores, err := os.ReadFile(filepath.Join(output, "dataset.csv"))
	if err != nil || !strings.Contains(string(scores), "Model_Score") {
		t.Fatalf("inference wrote no scores: %v\n%s", err, o)
	}
	secret, _ := os.ReadFile(key)
	entries, _ := os.ReadDir(output)
	for _, e := range entries {
		b, _ := os.ReadFile(filepath.Join(output, e.Name()))
		if e.Name() != "dataset.csv" || bytes.Contains(b, []byte("conv")) || bytes.HasPrefix(b, []byte("PK")) ||
			bytes.Contains(b, bytes.TrimSpace(secret)) {
			t.Errorf("inference left %s in /output", e.Name())
		}
	}

	for _, wire := range []string{"2.0", "2.8"} {
		t.Run("federation-"+wire, func(t *testing.T) { federationOfContainers(t, image, dir, wire) })
	}

	// What the image holds: the binary, the configs, the encrypted spec.
	if o, err := docker("create", "--name", name+"-files", image); err != nil {
		t.Fatalf("docker create: %v\n%s", err, o)
	}
	t.Cleanup(func() { docker("rm", "-f", name+"-files") })
	var tar bytes.Buffer
	cmd := exec.Command("docker", "export", name+"-files")
	cmd.Stdout = &tar
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	list := exec.Command("tar", "-t")
	list.Stdin = &tar
	files, err := list.Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range strings.Fields(string(files)) {
		switch {
		case f == "flarego", strings.HasPrefix(f, "app/config/config_fed_"), f == "app/custom/network.json.enc",
			strings.HasSuffix(f, "/"), f == ".dockerenv", strings.HasPrefix(f, "etc/"), strings.HasPrefix(f, "proc/"),
			strings.HasPrefix(f, "sys/"), strings.HasPrefix(f, "dev/"):
		default:
			t.Errorf("the image holds %s", f)
		}
	}
}

// federationOfContainers runs the image's pneumonia job as FCP would
// across containers: a server and two sites on a private Docker network,
// on NVFlare's 2.0 wire or its 2.4+ (CellNet) wire over mutual TLS with
// kits as NVFlare provisions them; each site with its own /input and key
// file, one started with NVFlare's client_train command line (2.8: its
// kit's startup/start.sh), the other with flarego's; then an inference
// container scores a site's /input with the global model. A site started
// with the wrong key stops with a clear error and writes nothing. The
// faults: the server restarted after round 1 (the sites register again
// and the job goes on from its last global model), site-1 off the network for
// 20 s (it rejoins), site-2 killed mid-round 3 (the round completes with
// min_clients).
func federationOfContainers(t *testing.T, image, dir, wire string) {
	fed := filepath.Join(dir, "fed"+wire)
	mk := func(p string) string {
		p = filepath.Join(fed, p)
		os.MkdirAll(p, 0o777)
		os.Chmod(p, 0o777)
		return p
	}
	net := strings.ReplaceAll(image, ":", "-") + "-net" + strings.ReplaceAll(wire, ".", "")
	if o, err := docker("network", "create", "--internal", net); err != nil {
		t.Fatalf("docker network create: %v\n%s", err, o)
	}
	t.Cleanup(func() { docker("network", "rm", net) })
	key := filepath.Join(dir, "creds", "secret_run_params.json")

	// The kits, and the command lines that start each role from them.
	var srvKit string
	kits := map[string]string{}
	var siteCmd func(name string) []string
	var lost, found, again string // what a site logs when the server goes and comes back
	againN := 1                   // how often it logs again: 2.8's sites register on every new connection
	switch wire {
	case "2.0":
		srvKit = mk("server/ws")
		os.MkdirAll(filepath.Join(srvKit, "startup"), 0o777)
		os.WriteFile(filepath.Join(srvKit, "startup", "fed_server.json"), []byte(`{"format_version": 2, "servers": [{"name": "example_project",
 "service": {"target": "0.0.0.0:8002"}, "admin_host": "0.0.0.0", "admin_port": 8003, "compression": "Gzip", "heart_beat_timeout": 600}]}`), 0o644)
		for _, name := range []string{"site-1", "site-2", "site-3"} {
			kit := mk(name + "/ws")
			os.MkdirAll(filepath.Join(kit, "startup"), 0o777)
			os.Chmod(filepath.Join(kit, "startup"), 0o777)
			os.WriteFile(filepath.Join(kit, "startup", "fed_client.json"), []byte(`{"format_version": 2,
 "servers": [{"name": "example_project", "service": {"target": "server:8002"}}], "client": {"compression": "Gzip", "retry_timeout": 30}}`), 0o644)
			kits[name] = kit
		}
		siteCmd = func(name string) []string {
			if name == "site-2" {
				return []string{"python3", "-u", "-m", "nvflare.private.fed.app.client.client_train", "-m", "/workspace", "-s", "fed_client.json", "--set", "secure_train=false", "uid=site-2"}
			}
			return []string{"/flarego", "client", "-m", "/workspace", "-s", "fed_client.json", "--job", "/app", "--set", "secure_train=false", "uid=" + name}
		}
		lost, found, again = "no answer from the server", "answered after", "registering again"
	case "2.8":
		var sites []string
		srvKit, sites = project28On(t, "server", 8002, "mtls", "site-1", "site-2", "site-3")
		for _, kit := range sites {
			name := filepath.Base(kit)
			kits[name] = kit
			// The kit's start scripts, as NVFlare 2.8 provisions them.
			os.WriteFile(filepath.Join(kit, "startup", "sub_start.sh"), []byte("#!/usr/bin/env bash\n"+
				`DIR="$( cd "$( dirname "${BASH_SOURCE[0]}" )" >/dev/null 2>&1 && pwd )"`+"\n"+
				"WORKSPACE=\"$DIR/..\"\n"+
				`python3 -u -m nvflare.private.fed.app.client.client_train -m "$WORKSPACE" -s fed_client.json --set secure_train=true uid=`+name+
				" org=nvidia config_folder=config &\n"), 0o755)
			os.WriteFile(filepath.Join(kit, "startup", "start.sh"), []byte("#!/usr/bin/env bash\n$DIR/sub_start.sh &\n"), 0o755)
		}
		siteCmd = func(name string) []string {
			if name == "site-1" {
				return []string{"/workspace/startup/start.sh"}
			}
			return []string{"python3", "-u", "-m", "nvflare.private.fed.app.client.client_train", "-m", "/workspace", "-s", "fed_client.json",
				"--set", "secure_train=true", "uid=" + name, "org=nvidia", "config_folder=config"}
		}
		lost, found, again, againN = "connection to the server lost", "registered with server1", "registered with server1", 2
		// The kits are written for the test's user; the containers run as 5642.
		for _, k := range append([]string{srvKit}, sites...) {
			filepath.WalkDir(k, func(p string, d os.DirEntry, err error) error {
				if err == nil {
					if d.IsDir() {
						os.Chmod(p, 0o777)
					} else {
						os.Chmod(p, 0o755)
					}
				}
				return nil
			})
		}
	default:
		t.Fatalf("wire %q", wire)
	}
	srvOut := mk("server/output")
	var out bytes.Buffer
	site := func(name string, keyFile string) (kit, input string) {
		kit, input = kits[name], mk(name+"/input")
		n := "2"
		if name == "site-2" {
			n = "150" // 300 images: a round takes it seconds, long enough to be killed in
		}
		if rc := run([]string{"samples", "--n", n, "--seed", name[len(name)-1:], input}, &out, &out); rc != 0 {
			t.Fatal(out.String())
		}
		b, _ := os.ReadFile(keyFile)
		os.WriteFile(filepath.Join(input, "secret_run_params.json"), b, 0o644)
		filepath.WalkDir(input, func(p string, d os.DirEntry, err error) error {
			if err == nil {
				os.Chmod(p, 0o755)
			}
			return nil
		})
		return kit, input
	}
	start := func(name string, mounts []string, cmd ...string) {
		args := []string{"run", "-d", "--name", name, "--network", net, "--network-alias", strings.TrimPrefix(name, net+"-"),
			"--read-only", "--user", "5642"}
		for _, m := range mounts {
			args = append(args, "-v", m)
		}
		if o, err := docker(append(append(args, image), cmd...)...); err != nil {
			t.Fatalf("docker run %s: %v\n%s", name, err, o)
		}
		t.Cleanup(func() {
			if t.Failed() {
				logs, _ := docker("logs", name)
				t.Logf("the log of %s:\n%s", name, tail(logs, 40))
			}
			docker("rm", "-f", name)
		})
	}
	wait := func(name string) (int, string) {
		o, err := exec.Command("timeout", "300", "docker", "wait", name).Output()
		logs, _ := docker("logs", name)
		if err != nil {
			t.Fatalf("%s did not end in 300 s: %v\n%s", name, err, logs)
		}
		var rc int
		fmt.Sscan(string(o), &rc)
		return rc, logs
	}
	began := time.Now()
	start(net+"-server", []string{srvKit + ":/workspace", srvOut + ":/output", filepath.Join(dir, "creds") + ":/server-credentials:ro"},
		"/flarego", "server", "-m", "/workspace", "-s", "fed_server.json", "--job", "/app", "--set", "secure_train="+fmt.Sprint(wire == "2.8"),
		"config_folder=config", "wait_time_after_min_received=15", "min_clients=1", "num_rounds=3")
	kit1, in1 := site("site-1", key)
	kit2, in2 := site("site-2", key)
	start(net+"-site-1", []string{kit1 + ":/workspace", in1 + ":/input:ro"}, siteCmd("site-1")...)
	start(net+"-site-2", []string{kit2 + ":/workspace", in2 + ":/input:ro"}, siteCmd("site-2")...)
	kit3, in3 := site("site-3", filepath.Join(dir, "wrong", "secret_run_params.json"))
	before3, _ := os.ReadDir(kit3)
	start(net+"-site-3", []string{kit3 + ":/workspace", in3 + ":/input:ro"}, siteCmd("site-3")...)

	rc, logs := wait(net + "-site-3")
	if rc == 0 || !strings.Contains(logs, "network.json.enc") || !strings.Contains(logs, "wrong key") {
		t.Errorf("a site with the wrong key: exit %d\n%s", rc, logs)
	}
	if e, _ := os.ReadDir(kit3); len(e) != len(before3) {
		t.Errorf("the site with the wrong key wrote in its workspace: %v", e)
	}
	untilN := func(name, text string, n int) {
		for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
			if logs, _ := docker("logs", name); strings.Count(logs, text) >= n {
				return
			} else if time.Now().After(deadline) {
				t.Fatalf("%s never logged %q %d times:\n%s", name, text, n, logs)
			}
		}
	}
	// After round 1 the server is restarted: the sites find it gone and
	// register again, and the job goes on from the global model it saved.
	// (Round 1 may end with site-1's result alone: the other site, started
	// by NVFlare's command line, may still be getting the app then.)
	untilN(net+"-server", "round 1/3 done: aggregated ", 1)
	if o, err := docker("restart", "-t", "3", net+"-server"); err != nil {
		t.Fatalf("docker restart: %v\n%s", err, o)
	}
	untilN(net+"-server", "resuming: /output/model_parameters.pt.enc holds this job's global model after round ", 1)
	// Both sites are back in the run before the next fault (a round with
	// one live site ends with its result).
	for _, text := range []string{"client site-1 registered", "client site-2 registered"} {
		for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
			logs, _ := docker("logs", net+"-server")
			if _, after, _ := strings.Cut(logs, "resuming: "); strings.Contains(after, text) {
				break
			} else if time.Now().After(deadline) {
				t.Fatalf("the restarted server never logged %q:\n%s", text, logs)
			}
		}
	}
	// Then site-1 loses the network for 20 s: it retries, says so, and
	// rejoins (a call in flight on the dead connection fails when its
	// keepalive pings go unanswered).
	if o, err := docker("network", "disconnect", net, net+"-site-1"); err != nil {
		t.Fatalf("docker network disconnect: %v\n%s", err, o)
	}
	cut := time.Now()
	time.Sleep(20 * time.Second)
	if o, err := docker("network", "connect", "--alias", "site-1", net, net+"-site-1"); err != nil {
		t.Fatalf("docker network connect: %v\n%s", err, o)
	}
	t.Logf("site-1 was off the network for %v", time.Since(cut).Round(100*time.Millisecond))
	// In round 3 site-2 is killed while it trains: the round completes
	// with min_clients (1), site-1's.
	untilN(net+"-server", "client site-2: task train round 3", 1)
	if o, err := docker("kill", net+"-site-2"); err != nil {
		t.Fatalf("docker kill: %v\n%s", err, o)
	}
	killed := time.Now()
	if rc, logs := wait(net + "-site-2"); rc == 0 || strings.Contains(logs, "round 3 done") {
		t.Errorf("site-2 was not killed mid-round: exit %d\n%s", rc, logs)
	}
	for _, n := range []string{"server", "site-1"} {
		rc, logs := wait(net + "-" + n)
		t.Logf("%s: exit %d after %v", n, rc, time.Since(began).Round(100*time.Millisecond))
		if n == "site-1" && (rc != 0 || strings.Count(logs, again) < againN || !strings.Contains(logs, lost) || !strings.Contains(logs, found)) {
			t.Errorf("site-1 did not say it lost and found the server (exit %d):\n%s", rc, logs)
		}
		if n == "server" {
			// The rounds completed without site-2, and a run that lost a
			// site says so and exits non-zero.
			if rc == 0 || !strings.Contains(logs, "client site-1: task train round 3") || !strings.Contains(logs, "round 3/3 done: aggregated 1 result(s)") ||
				!strings.Contains(logs, "lost 1 of 2 site(s): site-2") {
				t.Errorf("server (exit %d) log:\n%s", rc, logs)
			}
			t.Logf("round 3 ended %v after site-2 was killed", time.Since(killed).Round(100*time.Millisecond))
		}
		if d, _ := docker("diff", net+"-"+n); strings.TrimSpace(d) != "" {
			for _, l := range strings.Split(strings.TrimSpace(d), "\n") {
				if l != "A /workspace" && l != "A /output" && l != "A /input" && l != "A /server-credentials" {
					t.Errorf("%s changed its file system: %s", n, l)
				}
			}
		}
	}
	if logs, _ := docker("logs", net+"-site-2"); !strings.Contains(logs, "running flarego client") {
		t.Errorf("site-2 log:\n%s", logs)
	}
	model := filepath.Join(srvOut, "model_parameters.pt.enc")
	if b, err := os.ReadFile(model); err != nil || !bytes.HasPrefix(b, []byte("gAAAAA")) {
		t.Fatalf("the server's /output holds no encrypted global model: %v (%.20q)", err, b)
	}
	scores := mk("site-1/scores")
	start(net+"-infer", []string{in1 + ":/input:ro", srvOut + ":/model:ro", scores + ":/output"}, "python3", "infer.py", "/model/model_parameters.pt.enc")
	if rc, logs := wait(net + "-infer"); rc != 0 {
		t.Fatalf("inference with the global model: exit %d\n%s", rc, logs)
	}
	if b, err := os.ReadFile(filepath.Join(scores, "dataset.csv")); err != nil || !strings.Contains(string(b), "Model_Score") {
		t.Fatalf("no scores: %v", err)
	}
}
