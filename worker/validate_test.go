package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/model"
	"github.com/flarego/flarego/persistor"
	"github.com/flarego/flarego/persistor/pickle"
)

// The trainer's cross-site tasks: validate scores a model on the site's
// images and replies METRICS; bad task data gets BAD_TASK_DATA;
// submit_model before any training fails cleanly, after it returns the
// trained weights.
func TestTrainerValidateAndSubmitModel(t *testing.T) {
	dir := t.TempDir()
	b, err := os.ReadFile(filepath.Join("..", "testdata", "fernet", "key.txt"))
	if err != nil {
		t.Fatal(err)
	}
	key, err := persistor.ParseKey(string(bytes.TrimSpace(b)))
	if err != nil {
		t.Fatal(err)
	}
	job := writeJob(t, dir, filepath.Join("..", "testdata", "fernet", "key.txt"))
	input := filepath.Join(dir, "input")
	var out bytes.Buffer
	if rc := run([]string{"samples", "--n", "3", "--seed", "7", input}, &out, &out); rc != 0 {
		t.Fatal(out.String())
	}
	reg := registry(job, key, input, filepath.Join(dir, "output"), t.Logf)
	ex, err := reg.Executors[pathTrainer]([]byte(`{"lr": 0.001, "epochs": 1}`))
	if err != nil {
		t.Fatal(err)
	}
	spec, err := jobSpec(job, "network.PneumoniaModel", key)
	if err != nil {
		t.Fatal(err)
	}
	init, err := model.Init(spec, 1)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	rc := func(s *flare.Shareable) string { return s.ReturnCode() }

	r, err := ex.Execute(ctx, "submit_model", flare.NewShareable(), nil)
	if err != nil || rc(r) != flare.RCExecutionException {
		t.Fatalf("submit_model before training: %v, rc %s", err, rc(r))
	}
	task := flare.NewShareable()
	task.SetHeader(flare.HeaderModelOwner, "site-2")
	task.DXO = flare.WeightsDXO(init, nil)
	r, err = ex.Execute(ctx, "validate", task, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.DXO == nil || r.DXO.Kind != flare.KindMetrics || rc(r) != flare.RCOK {
		t.Fatalf("validate: %+v rc %q", r.DXO, rc(r))
	}
	root, err := model.TrainingFolder(input)
	if err != nil {
		t.Fatal(err)
	}
	_, samples, _ := model.ImageFolder(root)
	acc, ok1 := r.DXO.Metric(metricAccuracy)
	loss, ok2 := r.DXO.Metric(metricLoss)
	n, ok3 := r.DXO.Metric(metricImages)
	if !ok1 || !ok2 || !ok3 || acc < 0 || acc > 1 || loss <= 0 || int(n) != len(samples) || len(samples) == 0 {
		t.Fatalf("metrics %v (%d images on disk)", r.DXO.Values, len(samples))
	}
	// The accuracy is the share of images whose larger logit is their class.
	net, _ := model.NewNet(spec, init, 4)
	preds, err := model.Predict(ctx, net, samples, 4, nil)
	if err != nil {
		t.Fatal(err)
	}
	right := 0
	for _, p := range preds {
		if (p.Logits[1] > p.Logits[0]) == (p.Sample.Class == 1) {
			right++
		}
	}
	if want := float64(right) / float64(len(preds)); math.Abs(acc-want) > 1e-12 {
		t.Errorf("val_acc %v, want %v", acc, want)
	}
	// val_loss is the mean of -log softmax(logits)[class].
	var ce float64
	for _, p := range preds {
		l0, l1 := float64(p.Logits[0]), float64(p.Logits[1])
		m := math.Max(l0, l1)
		ce += m + math.Log(math.Exp(l0-m)+math.Exp(l1-m)) - float64(p.Logits[p.Sample.Class])
	}
	if want := ce / float64(len(preds)); math.Abs(loss-want) > 1e-9*math.Max(1, want) {
		t.Errorf("val_loss %v, want %v", loss, want)
	}
	// What goes on the wire decodes to the same metrics.
	wire, err := flare.EncodeShareable(r)
	if err != nil {
		t.Fatal(err)
	}
	back, err := flare.DecodeShareable(wire)
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := back.DXO.Metric(metricAccuracy); v != acc {
		t.Errorf("decoded val_acc %v, sent %v", v, acc)
	}

	for name, bad := range map[string]*flare.DXO{
		"no DXO":      nil,
		"metrics DXO": flare.MetricsDXO(pickle.Item{Key: "val_acc", Value: 1.0}),
		"wrong shapes": flare.WeightsDXO(func() *persistor.StateDict {
			sd := persistor.NewStateDict()
			sd.Set("fc.weight", init.Get("fc.bias"))
			return sd
		}(), nil),
	} {
		task := flare.NewShareable()
		task.DXO = bad
		r, err := ex.Execute(ctx, "validate", task, nil)
		if err != nil || rc(r) != flare.RCBadTaskData {
			t.Errorf("validate with %s: %v, rc %q", name, err, rc(r))
		}
	}

	task = flare.NewShareable()
	task.DXO = flare.WeightsDXO(init, nil)
	if r, err = ex.Execute(ctx, "train", task, nil); err != nil || r.DXO == nil {
		t.Fatalf("train: %v", err)
	}
	trained := r.DXO
	r, err = ex.Execute(ctx, "submit_model", flare.NewShareable(), nil)
	if err != nil || r.DXO == nil || r.DXO.Kind != flare.KindWeights || len(r.DXO.Data) != len(trained.Data) {
		t.Fatalf("submit_model after training: %v %+v", err, r)
	}
	for i, a := range r.DXO.Data {
		if a.Name != trained.Data[i].Name || !bytes.Equal(a.Array.Data, trained.Data[i].Array.Data) {
			t.Fatalf("submit_model's %s differs from the trained weights", a.Name)
		}
	}
}

// flarego simulate runs CrossSiteModelEval after training when the job
// asks for it: each site scores both local models and the global one
// with the Go trainer, and the server writes the matrix.
func TestSimulateCrossSiteEvaluation(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join("..", "testdata", "fernet", "key.txt")
	job := writeJob(t, dir, key)
	edit := func(name string, change func(map[string]any)) {
		p := filepath.Join(job, "config", name)
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
	var out bytes.Buffer
	images := map[string]float64{}
	for i, n := range []int{2, 3} {
		site := fmt.Sprintf("site-%d", i+1)
		if rc := run([]string{"samples", "--n", fmt.Sprint(n), "--seed", fmt.Sprint(i + 1), filepath.Join(dir, "data", site)}, &out, &out); rc != 0 {
			t.Fatal(out.String())
		}
		root, _ := model.TrainingFolder(filepath.Join(dir, "data", site))
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
		for _, owner := range []string{"site-1", "site-2", flare.ServerModelName} {
			m := res[site][owner]
			if acc, ok := m[metricAccuracy]; !ok || acc < 0 || acc > 1 || m[metricImages] != images[site] || m[metricLoss] <= 0 {
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
