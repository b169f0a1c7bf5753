package flare

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/flarego/flarego/persistor/pickle"
)

// siteExec trains as addExecutor does, submits its last local model,
// and validates by reporting the first weight of the model it got plus
// its offset, so each cell of the results names what was scored where.
type siteExec struct {
	add    addExecutor
	offset float64
	mu     sync.Mutex
	last   *DXO
}

func (e *siteExec) Execute(ctx context.Context, task string, data *Shareable, fl *FLContext) (*Shareable, error) {
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
		if data.HeaderString(HeaderSubmitModelName) != "best_model" {
			return nil, fmt.Errorf("submit_model without submit_model_name")
		}
		e.mu.Lock()
		defer e.mu.Unlock()
		out := NewShareable()
		out.DXO = WeightsDXO(e.last.StateDict(), nil)
		return out, nil
	case "validate":
		if data.DXO == nil || data.HeaderString(HeaderModelOwner) == "" {
			return nil, fmt.Errorf("validate task without a model or its owner")
		}
		w := data.DXO.Get("w").Float64At(0)
		out := NewShareable()
		out.DXO = MetricsDXO(pickle.Item{Key: "val_acc", Value: w + e.offset})
		return out, nil
	}
	return nil, fmt.Errorf("task %s", task)
}

// CrossSiteModelEval after ScatterAndGather: every site scores every
// submitted local model and the final global one (model locator); a site
// that cannot submit or validate leaves empty cells, not a stuck run.
func TestCrossSiteModelEval(t *testing.T) {
	cfg := testServerConfig(3, 1, 0)
	cfg.Components = append(cfg.Components, Component{ID: "locator", Path: PathPTFileModelLocator, Args: json.RawMessage(`{"pt_persistor_id": "persistor"}`)})
	cfg.Workflows = append(cfg.Workflows, Component{ID: "cross_site_validate", Path: PathCrossSiteModelEval,
		Args: json.RawMessage(`{"model_locator_id": "locator", "submit_model_timeout": 60, "validation_timeout": 60}`)})
	p := &memPersistor{init: initModel()}
	reg := &Registry{Persistors: map[string]func(json.RawMessage) (ModelPersistor, error){
		"test.MemPersistor": func(json.RawMessage) (ModelPersistor, error) { return p, nil }}}
	srv, err := NewServer(cfg, reg)
	if err != nil {
		t.Fatal(err)
	}
	srv.Logf, srv.OutputDir = t.Logf, t.TempDir()
	addr, done := serveOn(t, srv)

	site1 := &siteExec{add: addExecutor{delta: 1, steps: 1}}
	site2 := &siteExec{add: addExecutor{delta: 4, steps: 1}, offset: 100}
	var clients []*Client
	for name, tasks := range map[string]map[string]Executor{
		"site-1": {"train": site1, "submit_model": site1, "validate": site1},
		"site-2": {"train": site2, "submit_model": site2, "validate": site2},
		"site-3": {"train": addExecutor{delta: 7, steps: 1}}, // no submit_model, no validate
	} {
		clients = append(clients, &Client{Name: name, Target: addr, Tasks: tasks, Logf: t.Logf})
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
