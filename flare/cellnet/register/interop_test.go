//go:build interop

package register

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flarego/flarego/internal/peer"
)

// Two flarego sites sign in to a real NVFlare 2.8.1 server (challenge,
// register, token) and keep alive with heartbeats; the server logs them
// as joined. (The job the peer script then submits cannot run on these
// probes; that is the client's issue, not this layer's.)
func TestInteropRegisterWithNVFlare281(t *testing.T) {
	script := peer.Shared(t, filepath.Join("tools", "nvflare-peer-run.sh"))
	tgz := peer.Shared(t, filepath.Join("peers", "nvflare-2.8.1.tgz"))
	probe := filepath.Join(t.TempDir(), "probe")
	build := exec.Command("go", "build", "-o", probe, "../internal/probe")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the probe: %v\n%s", err, out)
	}
	work := t.TempDir()
	cmd := exec.Command("bash", script, "2.8.1", work, tgz)
	cmd.Env = append(os.Environ(), "CAPTURE=0", "SIMULATOR=0", "JOB_TIMEOUT=10", "CLIENT_CMD="+probe+" {site}", "PORT=18131")
	out, _ := cmd.CombinedOutput() // the job cannot finish on probes: the exit code says so
	if !strings.Contains(string(out), "both clients registered") {
		t.Fatalf("the sites did not register:\n%s", out)
	}
	for _, site := range []string{"site-1", "site-2"} {
		log, err := os.ReadFile(filepath.Join(work, "logs", site+".log"))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(log), site+" registered with server") || !strings.Contains(string(log), "heartbeat: Heartbeat response") {
			t.Fatalf("%s:\n%s", site, log)
		}
		t.Logf("%s: %s", site, strings.SplitN(string(log), "\n", 2)[0])
	}
}
