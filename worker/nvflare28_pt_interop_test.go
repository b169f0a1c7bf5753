//go:build interop

package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// debian13Root is the root of `make debian13-root` (torch 2.x, where
// NVFlare 2.8's PyTorch components run); missing, the test says so and
// is skipped, or fails under CI=true.
func debian13Root(t *testing.T) string {
	root := os.Getenv("FLAREGO_DEBIAN13_ROOT")
	if root == "" {
		root = filepath.Join(os.Getenv("HOME"), ".cache", "flarego", "debian13")
	}
	if _, err := os.Stat(filepath.Join(root, "usr", "bin", "python3")); err != nil {
		msg := "no Debian 13 root at " + root + " (make debian13-root makes it)"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return root
}

func freePort(t *testing.T) string { return fmt.Sprint(freeTCPPort(t)) }

// The pneumonia job on the real NVFlare 2.8.1 server with NVFlare's
// PyTorch parts (ScatterAndGather, InTimeAccumulateWeightedAggregator,
// PTFileModelPersistor with the plaintext PneumoniaModel), in the Debian
// 13 root; the sites are flarego's, training on generated images with the
// architecture from the job's custom/network.json.enc. After 2 rounds the
// server's saved model loads in torch and equals the NUM_STEPS-weighted
// mean of what the sites sent in the last round.
func TestInteropNVFlare281PyTorchServerPneumonia(t *testing.T) {
	root := debian13Root(t)
	if os.Geteuid() != 0 {
		if err := exec.Command("sudo", "-n", "true").Run(); err != nil {
			t.Skip("the Debian 13 root needs root or passwordless sudo")
		}
	}
	repo, _ := filepath.Abs("..")
	bin := filepath.Join(t.TempDir(), "flarego")
	build := exec.Command("go", "build", "-tags", "recordresults", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building flarego: %v\n%s", err, out)
	}
	dir := t.TempDir()
	key := filepath.Join(repo, "testdata", "fernet", "key.txt")
	for i, site := range []string{"site-1", "site-2"} {
		// Different amounts of data: the sites' NUM_STEPS differ, so the
		// weighted mean is not the plain one.
		out, err := exec.Command(bin, "samples", "--n", fmt.Sprint(4*(i+1)), "--seed", fmt.Sprint(i+1), filepath.Join(dir, "data", site)).CombinedOutput()
		if err != nil {
			t.Fatalf("samples: %v\n%s", err, out)
		}
	}
	job := filepath.Join(dir, "job")
	if out, err := exec.Command("cp", "-a", filepath.Join(repo, "testdata", "interop", "nvflare-pt-job"), job).CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	custom := filepath.Join(job, "app", "custom")
	if out, err := exec.Command(bin, "encrypt", filepath.Join(repo, "testdata", "pneumonia_spec.json"), key, filepath.Join(custom, "network.json.enc")).CombinedOutput(); err != nil {
		t.Fatalf("encrypt: %v\n%s", err, out)
	}
	for _, sec := range []string{"clear", "mtls"} {
		t.Run(sec, func(t *testing.T) {
			work := filepath.Join(dir, "run-"+sec)
			rec := filepath.Join(dir, "sent-"+sec)
			cmd := exec.Command("bash", filepath.Join(repo, "testdata", "interop", "nvflare-pt-server.sh"), root, work, freePort(t), sec)
			cmd.Env = append(os.Environ(), "JOB="+job, "JOB_TIMEOUT=400", "FLAREGO_RECORD_DIR="+rec,
				"CLIENT_CMD="+bin+" client -m {kit} -s fed_client.json --set secure_train=true uid={site} org=flarego config_folder=config --input "+
					filepath.Join(dir, "data", "{site}")+" --key-file "+key)
			start := time.Now()
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			var res struct {
				Status string  `json:"status"`
				JobS   float64 `json:"job_s"`
			}
			b, _ := os.ReadFile(filepath.Join(work, "result.json"))
			json.Unmarshal(b, &res)
			if res.Status != "FINISHED:COMPLETED" {
				t.Fatalf("status %q\n%s", res.Status, out)
			}
			cmp := exec.Command("bash", filepath.Join(repo, "testdata", "interop", "nvflare-pt-compare.sh"), root,
				filepath.Join(work, "FL_global_model.pt"), filepath.Join(rec, "round-1"))
			cout, err := cmp.CombinedOutput()
			if err != nil {
				t.Fatalf("the saved model: %v\n%s", err, cout)
			}
			var c struct {
				MaxAbsDiff float64 `json:"max_abs_diff"`
				Keys       int     `json:"keys"`
				TotalSteps float64 `json:"total_steps"`
			}
			line := strings.TrimSpace(string(cout))
			json.Unmarshal([]byte(line[strings.LastIndex(line, "\n")+1:]), &c)
			if c.Keys != 18 || c.TotalSteps <= 0 || c.MaxAbsDiff > 1e-5 {
				t.Fatalf("the saved model is not the weighted mean of what the sites sent: %s", cout)
			}
			t.Logf("%s: %.0f s in all, job %.1f s; saved model = NUM_STEPS-weighted mean of the sites' round-1 results (%d keys, %g steps, max |Δ| %.2g)",
				sec, time.Since(start).Seconds(), res.JobS, c.Keys, c.TotalSteps, c.MaxAbsDiff)
		})
	}
}
