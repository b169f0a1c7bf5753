//go:build interop

package main

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	peertool "github.com/flarego/flarego/internal/peer"
)

// peerRun runs the peer script (real NVFlare 2.8.1: provisioning, the
// admin API submitting hello-numpy-sag and waiting for it, shutdown)
// with flarego server in place of NVFlare's; env adds to its settings.
func peerRun(t *testing.T, bin, port, connSec string, env ...string) (out, work string) {
	t.Helper()
	script := peertool.Shared(t, filepath.Join("tools", "nvflare-peer-run.sh"))
	tgz := peertool.Shared(t, filepath.Join("peers", "nvflare-2.8.1.tgz"))
	work = t.TempDir()
	cmd := exec.Command("bash", script, "2.8.1", work, tgz)
	cmd.Env = append(os.Environ(), "CAPTURE=0", "SIMULATOR=0", "JOB_TIMEOUT=120", "PORT="+port, "CONN_SEC="+connSec,
		"SERVER_CMD="+bin+" server -m {kit} -s fed_server.json --set secure_train=true config_folder=config")
	cmd.Env = append(cmd.Env, env...)
	b, err := cmd.CombinedOutput()
	out = string(b)
	if err != nil || !strings.Contains(out, `"status": "FINISHED:COMPLETED"`) {
		logs := ""
		for _, f := range []string{"server", "site-1", "site-2", "submit"} {
			l, _ := os.ReadFile(filepath.Join(work, "logs", f+".log"))
			logs += "\n--- " + f + ".log (tail)\n" + tail(string(l), 60)
		}
		t.Fatalf("the job did not complete (%v):\n%s%s", err, out, logs)
	}
	return out, work
}

var jobResult = regexp.MustCompile(`job result: (\{.*\}) \(submit.py`)

const helloNumpyFinal = "[[4.0, 5.0, 6.0], [7.0, 8.0, 9.0], [10.0, 11.0, 12.0]]"

// Real NVFlare 2.8.1 sites and NVFlare's own admin API (flare_api,
// certificate login) run hello-numpy-sag on flarego server: the sites
// register, the job is submitted through the ObjectStreamer, scheduled
// when both sites are up, deployed with the submitter's signatures,
// run to FINISHED:COMPLETED with the right global model, and the system
// is shut down from flare_api; over clear h2c, TLS and mutual TLS. Then,
// for mutual TLS, flarego server starts again on the same kit and
// flare_api finds the job in the store, downloads its results (the
// model in its workspace), and submits, aborts and deletes another job.
func TestInteropNVFlare281ClientsOnFlaregoServer(t *testing.T) {
	bin := buildFlarego(t)
	for _, sec := range []string{"clear", "tls", "mtls"} {
		t.Run(sec, func(t *testing.T) {
			port := map[string]string{"clear": "18141", "tls": "18142", "mtls": "18143"}[sec]
			out, work := peerRun(t, bin, port, sec)
			m := finalModel.FindStringSubmatch(out)
			if m == nil || !strings.Contains(m[1], helloNumpyFinal) {
				t.Fatalf("final model: %v\n%s", m, out)
			}
			for _, line := range strings.Split(out, "\n") {
				if strings.Contains(line, "job result:") || strings.Contains(line, "server start -> ready") {
					t.Log(strings.TrimSpace(line))
				}
			}
			if sec == "mtls" {
				afterRestart(t, bin, work, port, out)
			}
		})
	}
}

// afterRestart starts flarego server again on the peer run's kit and
// checks the job store and the admin commands with flare_api.
func afterRestart(t *testing.T, bin, work, port, out string) {
	r := jobResult.FindStringSubmatch(out)
	if r == nil {
		t.Fatalf("no job result in the output")
	}
	var res struct {
		JobID string `json:"job_id"`
	}
	if err := json.Unmarshal([]byte(r[1]), &res); err != nil || res.JobID == "" {
		t.Fatalf("job result %s: %v", r[1], err)
	}
	kits, _ := filepath.Glob(filepath.Join(work, "ws", "*", "prod_00"))
	if len(kits) != 1 {
		t.Fatalf("no provisioned kits under %s", work)
	}
	kit := filepath.Join(kits[0], "server1")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv := exec.CommandContext(ctx, bin, "server", "-m", kit, "-s", "fed_server.json", "--set", "secure_train=true", "config_folder=config")
	srv.Dir = kit
	srvLog := &strings.Builder{}
	srv.Stdout, srv.Stderr = srvLog, srvLog
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- srv.Wait() }()
	for start := time.Now(); ; time.Sleep(50 * time.Millisecond) {
		c, err := net.Dial("tcp", "127.0.0.1:"+port)
		if err == nil {
			c.Close()
			break
		}
		if time.Since(start) > 20*time.Second {
			t.Fatalf("flarego server did not listen again:\n%s", srvLog)
		}
	}
	// flarego's own admin client on the same kit.
	dest := t.TempDir()
	adm := exec.CommandContext(ctx, bin, "admin", "--kit", filepath.Join(kits[0], "admin@nvidia.com"),
		"-c", "list_jobs", "-c", "check_status server", "-c", "download_job "+res.JobID+" "+dest)
	b, err := adm.CombinedOutput()
	if err != nil || !strings.Contains(string(b), res.JobID) || !strings.Contains(string(b), "FINISHED:COMPLETED") {
		t.Fatalf("flarego admin (%v):\n%s\n--- flarego server\n%s", err, b, tail(srvLog.String(), 40))
	}
	if _, err := os.Stat(filepath.Join(dest, res.JobID, "workspace", "models", "server.npy")); err != nil {
		t.Fatalf("flarego admin download_job: %v\n%s", err, b)
	}
	t.Logf("flarego admin --kit:\n%s", b)
	script, _ := filepath.Abs(filepath.Join("..", "testdata", "interop", "nvflare_admin_check.py"))
	chk := exec.CommandContext(ctx, "/usr/bin/python3", script, filepath.Join(kits[0], "admin@nvidia.com"),
		filepath.Join(work, "jobs", "hello-numpy-sag"), res.JobID, strings.ReplaceAll(helloNumpyFinal, ".0", ""))
	chk.Env = append(os.Environ(), "PYTHONPATH="+filepath.Join(work, "src"), "PYTHONDONTWRITEBYTECODE=1")
	chk.Dir = t.TempDir()
	b, err = chk.CombinedOutput()
	if err != nil {
		t.Fatalf("flare_api checks after the restart failed (%v):\n%s\n--- flarego server\n%s", err, b, tail(srvLog.String(), 60))
	}
	t.Logf("flare_api after the restart:\n%s", b)
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("flarego server after shutdown: %v\n%s", err, tail(srvLog.String(), 40))
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("flarego server still runs 30 s after flare_api shut it down:\n%s", tail(srvLog.String(), 40))
	}
}

// One real NVFlare 2.8.1 site and one flarego site in the same job on
// flarego server, submitted with flare_api.
func TestInteropNVFlare281MixedSitesOnFlaregoServer(t *testing.T) {
	bin := buildFlarego(t)
	mixed, _ := filepath.Abs(filepath.Join("..", "testdata", "interop", "mixed-client.sh"))
	out, work := peerRun(t, bin, "18144", "mtls", "CLIENT_CMD=bash "+mixed+" "+bin+" {kit} {site}")
	m := finalModel.FindStringSubmatch(out)
	if m == nil || !strings.Contains(m[1], helloNumpyFinal) {
		t.Fatalf("final model: %v\n%s", m, out)
	}
	s1, _ := os.ReadFile(filepath.Join(work, "logs", "site-1.log"))
	s2, _ := os.ReadFile(filepath.Join(work, "logs", "site-2.log"))
	if !strings.Contains(string(s1), "site site-1: registered with server1") {
		t.Fatalf("site-1 is not a flarego site:\n%s", tail(string(s1), 30))
	}
	if !strings.Contains(string(s2), "NPTrainer") && !strings.Contains(string(s2), "nvflare") {
		t.Fatalf("site-2 is not an NVFlare site:\n%s", tail(string(s2), 30))
	}
	t.Log(strings.TrimSpace(jobResult.FindString(out)))
}

// A real NVFlare 2.8.1 site is killed (SIGKILL, its parent and job
// processes) in the middle of a 30-round hello-numpy-sag on flarego
// server. The job needs both sites (min_clients 2), so it cannot go on:
// the server sees the site's job cell gone and, once it has not come back
// within the grace, ends the job FINISHED:EXECUTION_EXCEPTION with the
// reason, instead of waiting for a site that cannot answer.
func TestInteropNVFlare281SiteKilledOnFlaregoServer(t *testing.T) {
	bin := buildFlarego(t)
	script := peertool.Shared(t, filepath.Join("tools", "nvflare-peer-run.sh"))
	tgz := peertool.Shared(t, filepath.Join("peers", "nvflare-2.8.1.tgz"))
	kill, _ := filepath.Abs(filepath.Join("..", "testdata", "interop", "kill-site.sh"))
	work := t.TempDir()
	cmd := exec.Command("bash", script, "2.8.1", work, tgz)
	cmd.Env = append(os.Environ(), "CAPTURE=0", "SIMULATOR=0", "JOB_TIMEOUT=120", "PORT=18145", "NUM_ROUNDS=30",
		"SERVER_CMD="+bin+" server -m {kit} -s fed_server.json --set secure_train=true config_folder=config",
		"CLIENT_CMD=bash "+kill+" {kit} {site} site-2")
	start := time.Now()
	b, _ := cmd.CombinedOutput() // the job fails: the script says so
	out := string(b)
	srv, _ := os.ReadFile(filepath.Join(work, "logs", "server.log"))
	if !strings.Contains(out, `"status": "FINISHED:EXECUTION_EXCEPTION"`) {
		t.Fatalf("the job did not end with the reason:\n%s\n--- server.log (tail)\n%s", out, tail(string(srv), 60))
	}
	for _, want := range []string{"site-2 left: its job cell disconnected", "no other can join"} {
		if !strings.Contains(string(srv), want) {
			t.Errorf("the server's log does not say %q:\n%s", want, tail(string(srv), 40))
		}
	}
	t.Logf("job ended with the reason %s after the run started", time.Since(start).Round(time.Second))
	t.Log(strings.TrimSpace(jobResult.FindString(out)))
}
