package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flarego/flarego/fcp"
	"github.com/flarego/flarego/flare/npy"
	"github.com/flarego/flarego/persistor"
)

// flaregoProc runs the flarego command (this test binary, as testscript
// puts it on PATH) as a process of its own, in its own process group.
func flaregoProc(t *testing.T, dir string, args ...string) (*exec.Cmd, *syncBuffer) {
	t.Helper()
	bin, err := exec.LookPath("flarego")
	if err != nil {
		t.Fatalf("flarego is not on PATH (testscript.Main puts it there): %v", err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
	})
	return cmd, out
}

func waitFor(t *testing.T, what string, d time.Duration, out *syncBuffer, re *regexp.Regexp) string {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		if m := re.FindString(out.String()); m != "" {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not in %s:\n%s", what, d, tail(out.String(), 60))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// faultJob writes a hello-numpy job folder for the job store: rounds
// rounds, started when metaMin sites are up, each round needing sagMin
// results, each train task taking sleep s.
func faultJob(t *testing.T, rounds, metaMin, sagMin int, sleep float64) string {
	job := filepath.Join(t.TempDir(), "hello-numpy-slow")
	app := filepath.Join(job, "app", "config")
	os.MkdirAll(app, 0o755)
	os.WriteFile(filepath.Join(job, "meta.json"), []byte(fmt.Sprintf(`{"name": "hello-numpy-slow", "resource_spec": {},
 "min_clients": %d, "deploy_map": {"app": ["@ALL"]}}`, metaMin)), 0o600)
	os.WriteFile(filepath.Join(app, "config_fed_server.json"), []byte(fmt.Sprintf(`{"format_version": 2, "server": {"heart_beat_timeout": 4},
 "components": [{"id": "persistor", "path": "nvflare.app_common.np.np_model_persistor.NPModelPersistor", "args": {}},
  {"id": "shareable_generator", "path": "nvflare.app_common.shareablegenerators.full_model_shareable_generator.FullModelShareableGenerator", "args": {}},
  {"id": "aggregator", "path": "nvflare.app_common.aggregators.intime_accumulate_model_aggregator.InTimeAccumulateWeightedAggregator", "args": {"expected_data_kind": "WEIGHTS"}}],
 "workflows": [{"id": "scatter_and_gather", "path": "nvflare.app_common.workflows.scatter_and_gather.ScatterAndGather",
  "args": {"min_clients": %d, "num_rounds": %d, "start_round": 0, "wait_time_after_min_received": 1, "aggregator_id": "aggregator",
   "persistor_id": "persistor", "shareable_generator_id": "shareable_generator", "train_task_name": "train", "train_timeout": 0}}]}`, sagMin, rounds)), 0o600)
	os.WriteFile(filepath.Join(app, "config_fed_client.json"), []byte(fmt.Sprintf(`{"format_version": 2,
 "executors": [{"tasks": ["train"], "executor": {"path": "nvflare.app_common.np.np_trainer.NPTrainer", "args": {"sleep_time": %g}}}]}`, sleep)), 0o600)
	return job
}

func freeTCPPort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// admin28 runs flarego admin --kit with the commands, in this process.
func admin28(t *testing.T, kit string, cmds ...string) string {
	t.Helper()
	args := []string{"admin", "--kit", kit, "--timeout", "30s"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	var out bytes.Buffer
	if rc := run(args, &out, &out); rc != 0 {
		t.Fatalf("flarego admin %v: exit %d\n%s", cmds, rc, out.String())
	}
	return out.String()
}

// waitJob28 runs flarego admin --kit wait_job ID (each command bounded
// by timeout) and returns its output; the server's log tail if it fails.
func waitJob28(t *testing.T, kit, id, timeout string, srvOut *syncBuffer) string {
	t.Helper()
	var out bytes.Buffer
	if rc := run([]string{"admin", "--kit", kit, "--timeout", timeout, "-c", "wait_job " + id}, &out, &out); rc != 0 {
		t.Fatalf("wait_job: %s\n%s", out.String(), tail(srvOut.String(), 60))
	}
	return out.String()
}

var submitted = regexp.MustCompile(`Submitted job: ([0-9a-f-]{36})`)

func serverArgs(kit string) []string {
	return []string{"server", "-m", kit, "-s", "fed_server.json", "--set", "secure_train=true", "config_folder=config"}
}

// The server is killed (SIGKILL) in the middle of a job and started
// again: the job store keeps the job, reported FINISHED:ABNORMAL with the
// reason, and its workspace with the last global model saved before the
// kill can be downloaded; the sites register again and a new job runs.
func TestServerKilledMidJob(t *testing.T) {
	port := freeTCPPort(t)
	serverKit, sites := project28(t, port, "mtls", "site-1", "site-2")
	adminKit := filepath.Join(filepath.Dir(serverKit), "admin@nvidia.com")
	_, srvOut := flaregoProc(t, serverKit, serverArgs(serverKit)...)
	waitFor(t, "the server listening", 20*time.Second, srvOut, regexp.MustCompile(`listening on`))
	for _, kit := range sites {
		name := filepath.Base(kit)
		flaregoProc(t, kit, "client", "-m", kit, "-s", "fed_client.json", "--set", "secure_train=true", "uid="+name, "config_folder=config")
	}
	id := submitted.FindStringSubmatch(admin28(t, adminKit, "submit_job "+faultJob(t, 20, 2, 2, 0.3)))[1]
	waitFor(t, "round 2 saved", 60*time.Second, srvOut, regexp.MustCompile(`round 2/20 done`))
	// Kill the server's process group: no chance to record anything.
	pidOut, _ := exec.Command("pgrep", "-f", "-n", "server -m "+serverKit).Output()
	var pid int
	fmt.Sscan(string(pidOut), &pid)
	if pid <= 0 {
		t.Fatalf("no server process")
	}
	syscall.Kill(pid, syscall.SIGKILL)
	time.Sleep(300 * time.Millisecond)

	_, srvOut2 := flaregoProc(t, serverKit, serverArgs(serverKit)...)
	waitFor(t, "the job reported abnormal on restart", 20*time.Second, srvOut2, regexp.MustCompile(`was running when the server stopped: FINISHED:ABNORMAL`))
	meta := admin28(t, adminKit, "get_job_meta "+id)
	if !strings.Contains(meta, `"status": "FINISHED:ABNORMAL"`) || !strings.Contains(meta, "stopped while the job ran") {
		t.Fatalf("after the restart:\n%s", meta)
	}
	dest := t.TempDir()
	admin28(t, adminKit, "download_job "+id+" "+dest)
	model := filepath.Join(dest, id, "workspace", "models", "server.npy")
	if _, err := os.Stat(model); err != nil {
		t.Fatalf("the last global model was not kept: %v", err)
	}
	// The sites come back and a new job runs to the end.
	waitFor(t, "site-1 back", 30*time.Second, srvOut2, regexp.MustCompile(`site site-1 registered`))
	waitFor(t, "site-2 back", 30*time.Second, srvOut2, regexp.MustCompile(`site site-2 registered`))
	id2 := submitted.FindStringSubmatch(admin28(t, adminKit, "submit_job "+faultJob(t, 2, 2, 2, 0)))[1]
	admin28(t, adminKit, "wait_job "+id2)
}

// A site is killed in the middle of a round: the job needs one site, so
// the rounds go on with the other and the job completes; the server
// says which site it lost.
func TestSiteKilledMidRound(t *testing.T) {
	port := freeTCPPort(t)
	serverKit, sites := project28(t, port, "clear", "site-1", "site-2")
	adminKit := filepath.Join(filepath.Dir(serverKit), "admin@nvidia.com")
	_, srvOut := flaregoProc(t, serverKit, serverArgs(serverKit)...)
	waitFor(t, "the server listening", 20*time.Second, srvOut, regexp.MustCompile(`listening on`))
	var victim *exec.Cmd
	for i, kit := range sites {
		name := filepath.Base(kit)
		c, _ := flaregoProc(t, kit, "client", "-m", kit, "-s", "fed_client.json", "--set", "secure_train=true", "uid="+name, "config_folder=config")
		if i == 1 {
			victim = c
		}
	}
	// The job starts once both sites are ready; a round needs one.
	id := submitted.FindStringSubmatch(admin28(t, adminKit, "submit_job "+faultJob(t, 4, 2, 1, 0.5)))[1]
	waitFor(t, "round 1 done", 60*time.Second, srvOut, regexp.MustCompile(`round 1/4 done`))
	syscall.Kill(-victim.Process.Pid, syscall.SIGKILL)
	out := waitJob28(t, adminKit, id, "60s", srvOut)
	if !strings.Contains(out, "FINISHED:COMPLETED") {
		t.Fatalf("wait_job: %s\n%s", out, tail(srvOut.String(), 40))
	}
	if !regexp.MustCompile(`round 4/4 done: aggregated 1 result`).MatchString(srvOut.String()) {
		t.Fatalf("the last round did not go on with one site:\n%s", tail(srvOut.String(), 40))
	}
}

// tail is the last lines of s.
func tail(s string, lines int) string {
	l := strings.Split(s, "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}

// The only site of a job is killed: the job cannot get a result from
// anyone (its sites were chosen when it started), so it ends
// FINISHED:EXECUTION_EXCEPTION with the reason instead of waiting.
func TestJobEndsWhenItsSitesAreGone(t *testing.T) {
	port := freeTCPPort(t)
	serverKit, sites := project28(t, port, "clear", "site-1")
	adminKit := filepath.Join(filepath.Dir(serverKit), "admin@nvidia.com")
	_, srvOut := flaregoProc(t, serverKit, serverArgs(serverKit)...)
	waitFor(t, "the server listening", 20*time.Second, srvOut, regexp.MustCompile(`listening on`))
	victim, _ := flaregoProc(t, sites[0], "client", "-m", sites[0], "-s", "fed_client.json", "--set", "secure_train=true", "uid=site-1", "config_folder=config")
	id := submitted.FindStringSubmatch(admin28(t, adminKit, "submit_job "+faultJob(t, 4, 1, 1, 0.5)))[1]
	waitFor(t, "round 1 done", 60*time.Second, srvOut, regexp.MustCompile(`round 1/4 done`))
	syscall.Kill(-victim.Process.Pid, syscall.SIGKILL)
	waitFor(t, "the job ended", 30*time.Second, srvOut, regexp.MustCompile(`FINISHED:EXECUTION_EXCEPTION`))
	meta := admin28(t, adminKit, "get_job_meta "+id)
	if !strings.Contains(meta, "no other can join") {
		t.Fatalf("the job's meta does not say why:\n%s", meta)
	}
}

// The seed's pneumonia job (PTSecuredModelPersistor, the pneumonia
// trainer with the architecture encrypted in custom/network.json.enc) on
// flarego server from the job store, with two flarego sites on generated
// images, over mutual TLS: submitted with flarego admin, run to
// FINISHED:COMPLETED; the downloaded workspace holds the global model
// encrypted (a Fernet token that the key opens), and no plaintext model
// is left in the server's workspace.
func TestPneumoniaJobOnFlaregoServer28(t *testing.T) { pneumonia28(t, false) }

// The same with CrossSiteModelEval after training: each site scores both
// local models and the global one over the 2.4+ wire, and the server
// writes the matrix into the job's workspace.
func TestPneumoniaCrossSiteOnFlaregoServer28(t *testing.T) { pneumonia28(t, true) }

// pneumoniaSites starts a flarego site process for each 2.4+ kit, with 4
// generated images of its own in KIT/input and the key file key; it
// returns their outputs.
func pneumoniaSites(t *testing.T, kits []string, key string) []*syncBuffer {
	t.Helper()
	var outs []*syncBuffer
	for i, kit := range kits {
		var out bytes.Buffer
		input := filepath.Join(kit, "input")
		if rc := run([]string{"samples", "--n", "4", "--seed", fmt.Sprint(i + 1), input}, &out, &out); rc != 0 {
			t.Fatal(out.String())
		}
		_, o := flaregoProc(t, kit, "client", "-m", kit, "-s", "fed_client.json", "--set", "secure_train=true", "uid="+filepath.Base(kit),
			"config_folder=config", "--key-file", key, "--input", input, "--output", filepath.Join(kit, "output"))
		outs = append(outs, o)
	}
	return outs
}

func pneumonia28(t *testing.T, crossSite bool) {
	port := freeTCPPort(t)
	serverKit, sites := project28(t, port, "mtls", "site-1", "site-2")
	adminKit := filepath.Join(filepath.Dir(serverKit), "admin@nvidia.com")
	td, _ := filepath.Abs(filepath.Join("..", "testdata"))
	key := filepath.Join(td, "fernet", "key.txt")
	dir := t.TempDir()
	app := writeJob(t, dir, key)
	job := filepath.Join(dir, "pneumonia")
	os.MkdirAll(job, 0o755)
	if err := os.Rename(app, filepath.Join(job, "app")); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(job, "meta.json"), []byte(`{"name": "pneumonia", "resource_spec": {}, "min_clients": 2, "deploy_map": {"app": ["@ALL"]}}`), 0o600)
	if crossSite {
		addCrossSite(t, filepath.Join(job, "app"))
	}
	_, srvOut := flaregoProc(t, serverKit, append(serverArgs(serverKit), "--key-file", key)...)
	waitFor(t, "the server listening", 20*time.Second, srvOut, regexp.MustCompile(`listening on`))
	pneumoniaSites(t, sites, key)
	id := submitted.FindStringSubmatch(admin28(t, adminKit, "submit_job "+job))[1]
	waitJob28(t, adminKit, id, "3m", srvOut)
	dest := t.TempDir()
	admin28(t, adminKit, "download_job "+id+" "+dest)
	enc := filepath.Join(dest, id, "workspace", "output", fcp.GlobalModelName)
	b, err := os.ReadFile(enc)
	if err != nil || !bytes.HasPrefix(b, []byte("gAAAAA")) {
		t.Fatalf("the global model in the downloaded workspace: %v (%.20q)", err, b)
	}
	if crossSite {
		b, err := os.ReadFile(filepath.Join(dest, id, "workspace", "output", "cross_site_val", "cross_val_results.json"))
		if err != nil {
			t.Fatalf("no cross-site results in the workspace: %v\n%s", err, tail(srvOut.String(), 40))
		}
		var res map[string]map[string]map[string]float64
		if err := json.Unmarshal(b, &res); err != nil || len(res) != 2 || len(res["site-1"]) != 3 || len(res["site-2"]) != 3 {
			t.Fatalf("cross-site results: %v %s", err, b)
		}
	}
	var out bytes.Buffer
	if rc := run([]string{"pt", "inspect", "--key-file", key, enc}, &out, &out); rc != 0 {
		t.Fatalf("the key does not open the global model: %s", out.String())
	}
	filepath.WalkDir(filepath.Dir(serverKit), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && (strings.HasSuffix(p, ".pt") || strings.HasSuffix(p, ".pth")) {
			t.Errorf("a plaintext model in the server's workspace: %s", p)
		}
		return nil
	})
}

// The job NVFlare's Recipe API exports for hello-numpy (FedAvg, with
// NPModelPersistor's initial model and the widgets NVFlare adds) from
// flarego server's job store, with flarego sites running NPTrainer: each
// site gets its own app (deltas 1 and 3) and FedAvg's aggregation weights
// (3 for site-1, 1 for site-2) weigh the mean, 1.5 a round: after 3
// rounds the model is the initial one + 4.5.
func TestFedAvgRecipeJobOnFlaregoServer28(t *testing.T) {
	port := freeTCPPort(t)
	serverKit, sites := project28(t, port, "clear", "site-1", "site-2")
	adminKit := filepath.Join(filepath.Dir(serverKit), "admin@nvidia.com")
	job := filepath.Join(t.TempDir(), "hello-numpy")
	server := `{"format_version": 2,
 "workflows": [{"id": "controller", "path": "nvflare.app_common.workflows.fedavg.FedAvg",
   "args": {"aggregation_weights": {"site-1": 3, "site-2": 1}, "num_clients": 2, "num_rounds": 3}}],
 "components": [
  {"id": "json_generator", "path": "nvflare.app_common.widgets.validation_json_generator.ValidationJsonGenerator", "args": {}},
  {"id": "model_selector", "path": "nvflare.app_common.widgets.intime_model_selector.IntimeModelSelector", "args": {"aggregation_weights": {}, "key_metric": "accuracy"}},
  {"id": "persistor", "path": "nvflare.app_common.np.np_model_persistor.NPModelPersistor", "args": {"model": [[1, 2, 3], [4, 5, 6], [7, 8, 9]]}}],
 "task_data_filters": [], "task_result_filters": []}`
	for app, delta := range map[string]int{"app_1": 1, "app_2": 3} {
		cfg := filepath.Join(job, app, "config")
		os.MkdirAll(cfg, 0o755)
		os.WriteFile(filepath.Join(cfg, "config_fed_server.json"), []byte(server), 0o600)
		os.WriteFile(filepath.Join(cfg, "config_fed_client.json"), []byte(fmt.Sprintf(`{"format_version": 2,
 "executors": [{"tasks": ["train"], "executor": {"path": "nvflare.app_common.np.np_trainer.NPTrainer", "args": {"delta": %d}}}]}`, delta)), 0o600)
	}
	os.WriteFile(filepath.Join(job, "meta.json"), []byte(`{"name": "hello-numpy", "resource_spec": {}, "min_clients": 2,
 "deploy_map": {"app_1": ["server", "site-1"], "app_2": ["site-2"]}}`), 0o600)
	_, srvOut := flaregoProc(t, serverKit, serverArgs(serverKit)...)
	waitFor(t, "the server listening", 20*time.Second, srvOut, regexp.MustCompile(`listening on`))
	for _, kit := range sites {
		flaregoProc(t, kit, "client", "-m", kit, "-s", "fed_client.json", "--set", "secure_train=true", "uid="+filepath.Base(kit), "config_folder=config")
	}
	id := submitted.FindStringSubmatch(admin28(t, adminKit, "submit_job "+job))[1]
	waitJob28(t, adminKit, id, "60s", srvOut)
	dest := t.TempDir()
	admin28(t, adminKit, "download_job "+id+" "+dest)
	b, err := os.ReadFile(filepath.Join(dest, id, "workspace", "models", "server.npy"))
	if err != nil {
		t.Fatal(err)
	}
	a, err := npy.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := a.Float32s()
	for i, v := range got {
		if want := float32(i+1) + 4.5; v != want {
			t.Fatalf("global model %v, want the initial one + 4.5\n%s", got, tail(srvOut.String(), 40))
		}
	}
}

// A one-job server stopped by a signal (a container restart) leaves its
// sites running, and started again goes on from the global model it saved:
// the sites register again, the rounds left run, and the job ends.
func TestOneJobServerInterruptedGoesOn(t *testing.T) {
	port := freeTCPPort(t)
	serverKit, sites := project28(t, port, "mtls", "site-1", "site-2")
	td, _ := filepath.Abs(filepath.Join("..", "testdata"))
	key := filepath.Join(td, "fernet", "key.txt")
	dir := t.TempDir()
	job := writeJob(t, dir, key)
	output := filepath.Join(dir, "output")
	os.MkdirAll(output, 0o755)
	args := append(serverArgs(serverKit), "--key-file", key, "--output", output, "--job", job,
		"wait_time_after_min_received=0", "num_rounds=3")
	srv, srvOut := flaregoProc(t, serverKit, args...)
	waitFor(t, "the server listening", 20*time.Second, srvOut, regexp.MustCompile(`listening on`))
	siteOuts := pneumoniaSites(t, sites, key)
	waitFor(t, "round 1 saved", 60*time.Second, srvOut, regexp.MustCompile(`round 1/3 done`))
	srv.Process.Signal(syscall.SIGTERM)
	srv.Wait()
	if !strings.Contains(srvOut.String(), "the sites are left running") {
		t.Errorf("the interrupted server did not say it leaves the sites:\n%s", tail(srvOut.String(), 20))
	}
	time.Sleep(time.Second)
	for i, o := range siteOuts {
		if s := o.String(); strings.Contains(s, "shut down by the server") {
			t.Errorf("site-%d was shut down by the interrupted server:\n%s", i+1, tail(s, 20))
		}
	}
	_, srvOut2 := flaregoProc(t, serverKit, args...)
	waitFor(t, "resuming", 20*time.Second, srvOut2, regexp.MustCompile(`resuming: .* after round [12]/3; the run goes on from round [23]/3`))
	waitFor(t, "the job's end", 120*time.Second, srvOut2, regexp.MustCompile(`round 3/3 done: aggregated 2 result`))
	k, err := persistor.ReadKeyFile(key)
	if err != nil {
		t.Fatal(err)
	}
	ck, err := persistor.ReadCheckpointFile(filepath.Join(output, fcp.GlobalModelName), k)
	if err != nil {
		t.Fatal(err)
	}
	if ck.MetaProps == nil || !strings.Contains(fmt.Sprint(ck.MetaProps.Items), "{current_round 2}") {
		t.Errorf("the last global model's meta_props: %v", ck.MetaProps)
	}
}
