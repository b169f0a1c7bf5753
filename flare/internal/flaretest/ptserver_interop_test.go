//go:build interop

package flaretest

import (
	"os"
	"path/filepath"
	"testing"
)

// The real NVFlare 2.8.1 server with its PyTorch components runs the
// pneumonia job for NVFlare's own clients, whose stand-in trainer answers
// with random weights of the model's shapes: 2 rounds, and the saved
// FL_global_model.pt is the last round's NUM_STEPS-weighted mean of what
// the sites sent (float32 rounding apart). This checks the harness the
// flarego client's interop test runs in; the first round's submissions
// are the negative control.
func TestInteropNVFlarePTServerStandin(t *testing.T) {
	root := Debian13Root(t)
	for _, sec := range []string{"clear", "mtls"} {
		t.Run(sec, func(t *testing.T) {
			work := t.TempDir()
			run := RunPTServer(t, PTServerOptions{Root: root, Work: work, Port: FreePort(t), ConnSec: sec})
			if run.Err != nil {
				t.Fatalf("%v\n%s", run.Err, run.Output)
			}
			r := run.Result
			if r.Status != "FINISHED:COMPLETED" || len(r.SitesJoined) != 2 {
				t.Fatalf("status %q, sites %v\n%s", r.Status, r.SitesJoined, run.Output)
			}
			if c := r.StandinCheck; c == nil || c.Round != "round-1" || c.Keys != 18 || c.MaxAbsDiff > 1e-6 || c.TotalSteps != 8 {
				t.Fatalf("stand-in check %+v", c)
			}
			if _, err := os.Stat(run.Model); err != nil {
				t.Fatal(err)
			}
			for _, site := range []string{"site-1", "site-2"} {
				if _, err := os.Stat(filepath.Join(work, "kits", site, "startup", "fed_client.json")); err != nil {
					t.Fatal(err)
				}
			}
			c, err := ComparePTModel(t, root, run.Model, filepath.Join(work, "submissions", "round-1"))
			if err != nil || c.MaxAbsDiff > 1e-6 {
				t.Fatalf("round 1: %+v, %v", c, err)
			}
			c, err = ComparePTModel(t, root, run.Model, filepath.Join(work, "submissions", "round-0"))
			if err != nil || c.MaxAbsDiff < 1e-3 {
				t.Fatalf("round 0 should differ from the saved model: %+v, %v", c, err)
			}
			t.Logf("%s: server up in %.1f s, job %.1f s, model max |Δ| %.2g (%s)", sec, r.ServerStartS, r.JobS, r.StandinCheck.MaxAbsDiff, r.StandinCheck.WorstKey)
		})
	}
}
