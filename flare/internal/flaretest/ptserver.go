package flaretest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// This file runs the real NVFlare 2.8.1 server with its PyTorch
// components on the pneumonia job (testdata/interop/nvflare-pt-server.sh)
// for the interop tests: the Debian 13 root it runs in, the NVFlare
// tarball, the run and its results, and the check of the saved model.

// missing fails the test under CI=true, where every peer must be there,
// and skips it elsewhere.
func missing(t testing.TB, msg string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// Debian13Root is the Debian 13 root `make debian13-root` makes
// ($FLAREGO_DEBIAN13_ROOT, else $HOME/.cache/flarego/debian13), checked
// for the stamp scripts/debian13-root.sh leaves when it is complete.
func Debian13Root(t testing.TB) string {
	t.Helper()
	root := os.Getenv("FLAREGO_DEBIAN13_ROOT")
	if root == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			missing(t, "no Debian 13 root: $FLAREGO_DEBIAN13_ROOT is unset and there is no home folder")
		}
		root = filepath.Join(home, ".cache", "flarego", "debian13")
	}
	if _, err := os.Stat(filepath.Join(root, ".flarego-debian13")); err != nil {
		missing(t, "the Debian 13 root "+root+" is missing or incomplete (make debian13-root, or set $FLAREGO_DEBIAN13_ROOT)")
	}
	return root
}

// NVFlare281 is NVFlare 2.8.1's source tarball: $FLAREGO_NVFLARE_TGZ, else
// shared/peers/nvflare-2.8.1.tgz beside or above the repository.
func NVFlare281(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("FLAREGO_NVFLARE_TGZ"); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("$FLAREGO_NVFLARE_TGZ: %v", err)
		}
		return p
	}
	for dir := Root(); ; {
		p := filepath.Join(dir, "shared", "peers", "nvflare-2.8.1.tgz")
		if _, err := os.Stat(p); err == nil {
			return p
		}
		up := filepath.Dir(dir)
		if up == dir {
			break
		}
		dir = up
	}
	missing(t, "the NVFlare 2.8.1 peer (shared/peers/nvflare-2.8.1.tgz, or $FLAREGO_NVFLARE_TGZ) is missing")
	return ""
}

// FreePort is a TCP port on localhost that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// PTServerOptions say how to run NVFlare's PyTorch server.
type PTServerOptions struct {
	Root    string // the Debian 13 root ([Debian13Root])
	Work    string // the results' folder
	Port    int    // the server's port on localhost ([FreePort])
	ConnSec string // "clear" or "mtls"
	// ClientCmd runs each site on this machine in its kit folder, {kit}
	// and {site} replaced; empty, NVFlare's own clients run the stand-in
	// trainer in the root.
	ClientCmd string
	Env       []string      // more settings for the script (JOB=, NUM_ROUNDS=, SITES=, ...)
	Timeout   time.Duration // for the whole run; 0 is 10 minutes
}

// PTServerResult is the script's result.json.
type PTServerResult struct {
	JobID        string         `json:"job_id"`
	Status       string         `json:"status"`
	Error        string         `json:"error"`
	SitesJoined  []string       `json:"sites_joined"`
	LoginS       float64        `json:"login_s"`
	RegisterS    float64        `json:"register_s"`
	JobS         float64        `json:"job_s"`
	ServerStartS float64        `json:"server_start_s"`
	StandinCheck *PTModelCheck  `json:"standin_check"`
	Meta         map[string]any `json:"meta"`
}

// PTModelCheck is what testdata/interop/nvflare_pt_compare.py prints.
type PTModelCheck struct {
	MaxAbsDiff   float64           `json:"max_abs_diff"`
	WorstKey     string            `json:"worst_key"`
	Keys         int               `json:"keys"`
	Sites        []string          `json:"sites"`
	TotalSteps   float64           `json:"total_steps"`
	DtypeChanges map[string]string `json:"dtype_changes"`
	Missing      []string          `json:"missing"`
	Extra        []string          `json:"extra"`
	Round        string            `json:"round"`
	Error        string            `json:"error"`
}

// PTServerRun is one run: the script's output, its result, and where it
// left the saved global model (Work/FL_global_model.pt) and the sites'
// kits (Work/kits/SITE).
type PTServerRun struct {
	Work   string
	Output string
	Result PTServerResult
	Model  string
	Err    error // the script's exit status, with its FAILED line
}

// RunPTServer runs testdata/interop/nvflare-pt-server.sh with o and
// reads what it left. A failed run is reported in Err (with the
// script's output in Output), not as a test failure, so tests can look
// at the logs first. A canceled or timed-out run gets SIGTERM, on which
// the script stops everything it started.
func RunPTServer(t testing.TB, o PTServerOptions) *PTServerRun {
	t.Helper()
	timeout := o.Timeout
	if timeout == 0 {
		timeout = 10 * time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	script := filepath.Join(Root(), "testdata", "interop", "nvflare-pt-server.sh")
	cmd := exec.CommandContext(ctx, "bash", script, o.Root, o.Work, strconv.Itoa(o.Port), o.ConnSec)
	cmd.Env = append(os.Environ(), "NVFLARE_TGZ="+NVFlare281(t), "CLIENT_CMD="+o.ClientCmd)
	cmd.Env = append(cmd.Env, o.Env...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 45 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	run := &PTServerRun{Work: o.Work, Output: out.String(), Model: filepath.Join(o.Work, "FL_global_model.pt")}
	if err != nil {
		run.Err = fmt.Errorf("nvflare-pt-server.sh: %v: %s", err, failedLine(run.Output))
	}
	if b, rerr := os.ReadFile(filepath.Join(o.Work, "result.json")); rerr == nil {
		if jerr := json.Unmarshal(b, &run.Result); jerr != nil && run.Err == nil {
			run.Err = fmt.Errorf("result.json: %v", jerr)
		}
	} else if run.Err == nil {
		run.Err = fmt.Errorf("nvflare-pt-server.sh left no result.json: %v", rerr)
	}
	return run
}

// failedLine is the script's last "FAILED:" line, or its last line.
func failedLine(out string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], "FAILED:") {
			return lines[i]
		}
	}
	return lines[len(lines)-1]
}

// ComparePTModel compares the model the server saved with the
// NUM_STEPS-weighted mean of the sites' submissions (JSON files, or
// folders of them: {"site", "num_steps", "weights": "X.npz" or "X.pt"},
// the weights named relative to the JSON), with the root's torch
// (testdata/interop/nvflare-pt-compare.sh). The error carries the
// script's message when keys or shapes differ.
func ComparePTModel(t testing.TB, root, model string, submissions ...string) (*PTModelCheck, error) {
	t.Helper()
	script := filepath.Join(Root(), "testdata", "interop", "nvflare-pt-compare.sh")
	args := append([]string{script, root, model}, submissions...)
	cmd := exec.Command("bash", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var c PTModelCheck
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "{") {
			if jerr := json.Unmarshal([]byte(line), &c); jerr != nil {
				return nil, fmt.Errorf("nvflare-pt-compare.sh printed %q: %v", line, jerr)
			}
			break
		}
	}
	if err != nil {
		return &c, fmt.Errorf("nvflare-pt-compare.sh: %v: %s", err, strings.TrimSpace(stderr.String()))
	}
	return &c, nil
}
