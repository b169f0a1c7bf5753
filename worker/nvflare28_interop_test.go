//go:build interop

package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	peertool "github.com/flarego/flarego/internal/peer"
)

// nvflare28Job runs the real NVFlare 2.8.1 server (with its admin API
// submitting hello-numpy-sag, 3 rounds) and two `flarego client`s in
// place of NVFlare's, started in their kit folders as start.sh would
// start NVFlare's; it returns the script's output and the work folder.
func nvflare28Job(t *testing.T, port, connSec string) (string, string) {
	script := peertool.Shared(t, filepath.Join("tools", "nvflare-peer-run.sh"))
	tgz := peertool.Shared(t, filepath.Join("peers", "nvflare-2.8.1.tgz"))
	bin := buildFlarego(t)
	work := t.TempDir()
	cmd := exec.Command("bash", script, "2.8.1", work, tgz)
	cmd.Env = append(os.Environ(), "CAPTURE=0", "SIMULATOR=0", "JOB_TIMEOUT=120", "PORT="+port, "CONN_SEC="+connSec,
		"CLIENT_CMD="+bin+" client -m {kit} -s fed_client.json --set secure_train=true uid={site} config_folder=config")
	out, err := cmd.CombinedOutput()
	logs := string(out)
	for _, site := range []string{"site-1", "site-2"} {
		b, _ := os.ReadFile(filepath.Join(work, "logs", site+".log"))
		logs += "\n--- " + site + ".log\n" + string(b)
	}
	if err != nil || !strings.Contains(string(out), `"status": "FINISHED:COMPLETED"`) {
		srv, _ := os.ReadFile(filepath.Join(work, "logs", "server.log"))
		t.Fatalf("the job did not complete (%v):\n%s\n--- server.log (tail)\n%s", err, logs, tail(string(srv), 80))
	}
	return logs, work
}

var finalModel = regexp.MustCompile(`final global model \(server job workspace\): (.*)`)

// hello-numpy-sag on a real NVFlare 2.8.1 server with flarego sites: 3
// rounds of NPTrainer (+1 each), so the global model goes from
// [[1,2,3],[4,5,6],[7,8,9]] to [[4,5,6],[7,8,9],[10,11,12]]; over clear
// h2c, TLS (the server's certificate checked) and mutual TLS.
func TestInteropNVFlare281HelloNumpy(t *testing.T) {
	for _, sec := range []string{"clear", "tls", "mtls"} {
		t.Run(sec, func(t *testing.T) {
			port := map[string]string{"clear": "18133", "tls": "18137", "mtls": "18134"}[sec]
			out, work := nvflare28Job(t, port, sec)
			m := finalModel.FindStringSubmatch(out)
			if m == nil || !strings.Contains(m[1], "[[4.0, 5.0, 6.0], [7.0, 8.0, 9.0], [10.0, 11.0, 12.0]]") {
				logs, _ := filepath.Glob(filepath.Join(work, "ws", "*", "*", "server1", "*", "log.txt"))
				var srv []byte
				if len(logs) > 0 {
					srv, _ = os.ReadFile(logs[0])
				}
				t.Fatalf("final model: %v\n%s\n--- server log.txt (tail)\n%s", m, out, tail(string(srv), 120))
			}
			for _, site := range []string{"site-1", "site-2"} {
				if !strings.Contains(out, site+": site "+site+": registered with server1") {
					t.Errorf("%s did not log its registration", site)
				}
			}
			t.Logf("final model: %s", m[1])
		})
	}
}
