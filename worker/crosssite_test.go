package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flarego/flarego/fcp"
	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/server"
	"github.com/flarego/flarego/model"
	"github.com/flarego/flarego/pneumonia"
)

// flarego simulate runs CrossSiteModelEval after training when the job
// asks for it: each site scores both local models and the global one
// with the Go trainer, and the server writes the matrix.
func TestSimulateCrossSiteEvaluation(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join("..", "testdata", "fernet", "key.txt")
	job := writeJob(t, dir, key)
	addCrossSite(t, job)
	var out bytes.Buffer
	images := map[string]float64{}
	for i, n := range []int{2, 3} {
		site := fmt.Sprintf("site-%d", i+1)
		if rc := run([]string{"samples", "--n", fmt.Sprint(n), "--seed", fmt.Sprint(i + 1), filepath.Join(dir, "data", site)}, &out, &out); rc != 0 {
			t.Fatal(out.String())
		}
		root, _ := (fcp.Locations{Input: filepath.Join(dir, "data", site)}).TrainingFolder()
		_, samples, _ := model.ImageFolder(root)
		images[site] = float64(len(samples))
	}
	output := filepath.Join(dir, "output")
	t.Setenv("FLAREGO_OUTPUT", output)
	os.MkdirAll(output, 0o755)
	if rc := run([]string{"simulate", job, "-n", "2", "--data", filepath.Join(dir, "data"), "--key-file", key, "--set", "wait_time_after_min_received=0"}, &out, &out); rc != 0 {
		t.Fatalf("simulate: exit %d\n%s", rc, out.String())
	}
	b, err := os.ReadFile(filepath.Join(output, "cross_site_val", "cross_val_results.json"))
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	var res map[string]map[string]map[string]float64
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatal(err)
	}
	for _, site := range []string{"site-1", "site-2"} {
		for _, owner := range []string{"site-1", "site-2", server.ServerModelName} {
			m := res[site][owner]
			if acc, ok := m[pneumonia.MetricAccuracy]; !ok || acc < 0 || acc > 1 || m[pneumonia.MetricImages] != images[site] || m[pneumonia.MetricLoss] <= 0 {
				t.Errorf("%s scoring %s: %v (site has %v images)", site, owner, m, images[site])
			}
		}
	}
	if len(res) != 2 {
		t.Errorf("results for %d sites: %s", len(res), b)
	}
	if !strings.Contains(out.String(), "cross-site evaluation done: 3 model(s) scored by 2 site(s)") {
		t.Errorf("no cross-site summary in the output:\n%s", out.String())
	}
}

// addCrossSite adds CrossSiteModelEval after training to the pneumonia
// app in dir: the sites' submit_model and validate tasks, the server's
// model locator and the workflow.
func addCrossSite(t *testing.T, dir string) {
	t.Helper()
	edit := func(name string, change func(map[string]any)) {
		p := filepath.Join(dir, "config", name)
		b, _ := os.ReadFile(p)
		var cfg map[string]any
		if err := json.Unmarshal(b, &cfg); err != nil {
			t.Fatal(err)
		}
		change(cfg)
		b, _ = json.Marshal(cfg)
		os.WriteFile(p, b, 0o644)
	}
	edit("config_fed_client.json", func(c map[string]any) {
		c["executors"].([]any)[0].(map[string]any)["tasks"] = []string{"train", "submit_model", "validate"}
	})
	edit("config_fed_server.json", func(c map[string]any) {
		c["components"] = append(c["components"].([]any), map[string]any{"id": "model_locator", "path": flare.PathPTFileModelLocator,
			"args": map[string]any{"pt_persistor_id": "persistor"}})
		c["workflows"] = append(c["workflows"].([]any), map[string]any{"id": "cross_site_validate", "path": flare.PathCrossSiteModelEval,
			"args": map[string]any{"model_locator_id": "model_locator"}})
	})
}
