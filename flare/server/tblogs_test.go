package server

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"path/filepath"
	"testing"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/client"
	"github.com/flarego/flarego/flare/internal/flaretest"
	"github.com/flarego/flarego/flare/wire20"
	"github.com/flarego/flarego/internal/tensorboard"
)

// metaExec trains as siteExec and adds train_loss and train_accuracy to
// its result's meta.
type metaExec struct {
	*siteExec
	loss, acc any
}

func (e metaExec) Execute(ctx context.Context, task string, data *flare.Shareable, fl *flare.FLContext) (*flare.Shareable, error) {
	r, err := e.siteExec.Execute(ctx, task, data, fl)
	if err == nil && task == "train" {
		r.DXO.Meta.Set("train_loss", e.loss)
		r.DXO.Meta.Set("train_accuracy", e.acc)
	}
	return r, err
}

// A server with TBLogs writes, per round at step round+1, the number of
// results, their steps, the round's time and the step-weighted mean of the
// results' train_loss and train_accuracy (ignoring values that are no
// finite number); after the rounds, the cross-site matrix at step
// num_rounds.
func TestServerCurves(t *testing.T) {
	cfg := flaretest.ServerConfig(2, 2, 0)
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
	tb := t.TempDir()
	srv.Logf, srv.TBLogs = t.Logf, tb
	addr, done := serveOn(t, srv)
	site1 := metaExec{&siteExec{add: flaretest.AddExecutor{Delta: 1, Steps: 1}}, 0.5, 0.25}
	site2 := metaExec{&siteExec{add: flaretest.AddExecutor{Delta: 4, Steps: 3}, offset: 0.5}, 1.5, int64(1)}
	var clients []*client.Client
	for name, ex := range map[string]flare.Executor{"site-1": site1, "site-2": site2} {
		clients = append(clients, &client.Client{Name: name, Wire: wire20.Wire{}, Target: addr, Logf: t.Logf,
			Tasks: map[string]flare.Executor{"train": ex, "submit_model": ex, "validate": ex}})
	}
	runToEnd(t, done, clients...)
	files, _ := filepath.Glob(filepath.Join(tb, RunName, tensorboard.FilePrefix+"*"))
	if len(files) != 1 {
		t.Fatalf("event files %v", files)
	}
	events, err := tensorboard.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, e := range events {
		for _, v := range e.Values {
			if v.Tag == TagRoundSeconds {
				if !(v.Value >= 0 && v.Value < 60) {
					t.Errorf("%s = %v", v.Tag, v.Value)
				}
				v.Value = 0
			}
			got[v.Tag] += fmt.Sprintf("%d:%g ", e.Step, v.Value)
		}
	}
	// The global model's w[0] after two rounds: 1 + 2*(1*1+3*4)/4 = 7.5;
	// site-1's last local model 1+3.25+1 = 5.25, site-2's 1+3.25+4 = 8.25.
	want := map[string]string{
		TagContributions:                        "1:2 2:2 ",
		TagNumSteps:                             "1:4 2:4 ",
		TagRoundSeconds:                         "1:0 2:0 ",
		TagTrainLoss:                            "1:1.25 2:1.25 ", // (1*0.5 + 3*1.5) / 4
		TagTrainAccuracy:                        "1:0.8125 2:0.8125 ",
		CrossSiteTag("site-1", "site-1"):        "2:5.25 ",
		CrossSiteTag("site-2", "site-1"):        "2:8.25 ",
		CrossSiteTag(ServerModelName, "site-1"): "2:7.5 ",
		CrossSiteTag("site-1", "site-2"):        "2:5.75 ",
		CrossSiteTag("site-2", "site-2"):        "2:8.75 ",
		CrossSiteTag(ServerModelName, "site-2"): "2:8 ",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("curves\n%v\nwant\n%v", got, want)
	}
}

// Meta values that are no finite number are left out of the means; a
// server without TBLogs keeps no curves.
func TestRunCurvesAdd(t *testing.T) {
	c := &runCurves{}
	for _, m := range []any{0.5, int64(2), math.NaN(), math.Inf(1), "x", nil, 1e300} {
		d := flare.WeightsDXO(flaretest.InitModel(), nil)
		d.Meta.Set("train_loss", m)
		c.add(d, 2)
	}
	if c.weights[0] != 4 || c.sums[0] != 5 || c.weights[1] != 0 {
		t.Errorf("sums %v weights %v", c.sums, c.weights)
	}
	var none *runCurves
	none.add(flare.WeightsDXO(flaretest.InitModel(), nil), 1)
	s := NewAdmin()
	s.startCurves(&runState{})()
}
