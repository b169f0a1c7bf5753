package server

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/client"
	"github.com/flarego/flarego/flare/internal/flaretest"
	"github.com/flarego/flarego/flare/wire20"
	"github.com/flarego/flarego/persistor/pickle"
)

// siteExec trains as flaretest.AddExecutor does, submits its last local model,
// and validates by reporting the first weight of the model it got plus
// its offset, so each cell of the results names what was scored where.
type siteExec struct {
	add    flaretest.AddExecutor
	offset float64
	mu     sync.Mutex
	last   *flare.DXO
}

func (e *siteExec) Execute(ctx context.Context, task string, data *flare.Shareable, fl *flare.FLContext) (*flare.Shareable, error) {
	switch task {
	case "train":
		r, err := e.add.Execute(ctx, task, data, fl)
		if err == nil {
			e.mu.Lock()
			e.last = r.DXO
			e.mu.Unlock()
		}
		return r, err
	case "submit_model":
		if data.HeaderString(flare.HeaderSubmitModelName) != "best_model" {
			return nil, fmt.Errorf("submit_model without submit_model_name")
		}
		e.mu.Lock()
		defer e.mu.Unlock()
		out := flare.NewShareable()
		out.DXO = flare.WeightsDXO(e.last.StateDict(), nil)
		return out, nil
	case "validate":
		if data.DXO == nil || data.HeaderString(flare.HeaderModelOwner) == "" {
			return nil, fmt.Errorf("validate task without a model or its owner")
		}
		w := data.DXO.Get("w").Float64At(0)
		out := flare.NewShareable()
		out.DXO = flare.MetricsDXO(pickle.Item{Key: "val_acc", Value: w + e.offset})
		return out, nil
	}
	return nil, fmt.Errorf("task %s", task)
}

// CrossSiteModelEval after ScatterAndGather: every site scores every
// submitted local model and the final global one (model locator); a site
// that cannot submit or validate leaves empty cells, not a stuck run.
func TestCrossSiteModelEval(t *testing.T) {
	cfg := flaretest.ServerConfig(3, 1, 0)
	cfg.Components = append(cfg.Components, flare.Component{ID: "locator", Path: flare.PathPTFileModelLocator, Args: json.RawMessage(`{"pt_persistor_id": "persistor"}`)})
	cfg.Workflows = append(cfg.Workflows, flare.Component{ID: "cross_site_validate", Path: flare.PathCrossSiteModelEval,
		Args: json.RawMessage(`{"model_locator_id": "locator", "submit_model_timeout": 60, "validation_timeout": 60}`)})
	p := &flaretest.MemPersistor{Init: flaretest.InitModel()}
	reg := &flare.Registry{Persistors: map[string]func(json.RawMessage) (flare.ModelPersistor, error){
		"test.MemPersistor": func(json.RawMessage) (flare.ModelPersistor, error) { return p, nil }}}
	srv, err := New(cfg, reg)
	if err != nil {
		t.Fatal(err)
	}
	srv.Logf, srv.OutputDir = t.Logf, t.TempDir()
	addr, done := serveOn(t, srv)

	site1 := &siteExec{add: flaretest.AddExecutor{Delta: 1, Steps: 1}}
	site2 := &siteExec{add: flaretest.AddExecutor{Delta: 4, Steps: 1}, offset: 100}
	var clients []*client.Client
	for name, tasks := range map[string]map[string]flare.Executor{
		"site-1": {"train": site1, "submit_model": site1, "validate": site1},
		"site-2": {"train": site2, "submit_model": site2, "validate": site2},
		"site-3": {"train": flaretest.AddExecutor{Delta: 7, Steps: 1}}, // no submit_model, no validate
	} {
		clients = append(clients, &client.Client{Name: name, Wire: wire20.Wire{}, Target: addr, Tasks: tasks, Logf: t.Logf})
	}
	runToEnd(t, done, clients...)
	b, err := os.ReadFile(filepath.Join(srv.OutputDir, "cross_site_val", "cross_val_results.json"))
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]map[string]map[string]float64
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	// Local models: w[0] = 1+1 and 1+4; global: 1 + (1+4+7)/3 = 5.
	want := map[string]map[string]map[string]float64{
		"site-1": {"site-1": {"val_acc": 2}, "site-2": {"val_acc": 5}, ServerModelName: {"val_acc": 5}},
		"site-2": {"site-1": {"val_acc": 102}, "site-2": {"val_acc": 105}, ServerModelName: {"val_acc": 105}},
		"site-3": {"site-1": {}, "site-2": {}, ServerModelName: {}},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("results\n%s\nwant %v", b, want)
	}
}

// A site's metrics must fit cross_val_results.json: finite numbers,
// booleans and short strings, with short names and not too many of them.
func TestCheckMetrics(t *testing.T) {
	many := map[string]any{}
	for i := 0; i <= maxMetrics; i++ {
		many[fmt.Sprintf("m%d", i)] = 1.0
	}
	for _, c := range []struct {
		m    map[string]any
		want string
	}{
		{map[string]any{"val_acc": 0.5, "n": int64(3), "ok": true, "note": "fine"}, ""},
		{map[string]any{"val_acc": math.NaN()}, "is NaN"},
		{map[string]any{"val_acc": math.Inf(1)}, "is +Inf"},
		{map[string]any{"note": strings.Repeat("x", maxMetricStringBytes+1)}, "a string of"},
		{map[string]any{strings.Repeat("k", flare.MaxNameBytes+1): 1.0}, "a metric name of"},
		{map[string]any{"l": []any{1.0}}, "not a number"},
		{many, "metrics (at most"},
	} {
		err := checkMetrics(c.m)
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%.60v: %v, want %q", c.m, err, c.want)
		}
	}
}
