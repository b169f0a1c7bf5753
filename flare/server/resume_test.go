package server

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"filippo.io/age"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/client"
	"github.com/flarego/flarego/flare/internal/flaretest"
	"github.com/flarego/flarego/flare/wire20"
	"github.com/flarego/flarego/persistor"
	"github.com/flarego/flarego/persistor/pickle"
)

// roundsSeen records the rounds of the tasks an executor is given.
type roundsSeen struct {
	mu  sync.Mutex
	got []int64
	ex  flare.Executor
}

func (r *roundsSeen) Execute(ctx context.Context, task string, data *flare.Shareable, fl *flare.FLContext) (*flare.Shareable, error) {
	v, _ := data.Header(flare.HeaderCurrentRound)
	r.mu.Lock()
	r.got = append(r.got, v.(int64))
	r.mu.Unlock()
	return r.ex.Execute(ctx, task, data, fl)
}

// resumeRun runs a 3-round job named job on a one-job server storing its
// models with p, one client adding 1 a round; it returns the final w,
// the rounds the client was given and the server's log.
func resumeRun(t *testing.T, p *persistor.SecuredPersistor, job string) ([]float32, string, string) {
	t.Helper()
	srv, err := New(flaretest.ServerConfig(1, 3, 0), &flare.Registry{Persistors: map[string]func(json.RawMessage) (flare.ModelPersistor, error){
		"test.MemPersistor": func(json.RawMessage) (flare.ModelPersistor, error) { return p, nil }}})
	if err != nil {
		t.Fatal(err)
	}
	log := &flaretest.Log{T: t}
	srv.Logf, srv.Resume = log.Logf, job
	addr, done := serveOn(t, srv)
	rounds := &roundsSeen{ex: flaretest.AddExecutor{Delta: 1, Steps: 1}}
	cl := &client.Client{Name: "site-1", Wire: wire20.Wire{}, Target: addr, Logf: t.Logf, Tasks: map[string]flare.Executor{"train": rounds}}
	runToEnd(t, done, cl)
	if len(p.Recipients) > 0 {
		return nil, fmt.Sprint(rounds.got), strings.Join(log.Lines(), "\n")
	}
	ck, _, err := p.Last()
	if err != nil {
		t.Fatal(err)
	}
	w, _ := ck.Model.Get("w").Float32s()
	return w, fmt.Sprint(rounds.got), strings.Join(log.Lines(), "\n")
}

// saved writes a global model as a server of job would have after round r
// of rounds: w = 1..4 + 10.
func saved(t *testing.T, p *persistor.SecuredPersistor, job string, r, rounds int64) {
	t.Helper()
	sd := persistor.NewStateDict()
	sd.Set("w", persistor.FromFloat32([]float32{11, 12, 13, 14}, 2, 2))
	sd.Set("bn.num_batches_tracked", persistor.FromInt64([]int64{0}))
	meta := &pickle.Dict{Items: []pickle.Item{{Key: "flarego_job", Value: job}, {Key: "current_round", Value: r}, {Key: "num_rounds", Value: rounds}}}
	if err := p.Save(&persistor.Checkpoint{Model: sd, MetaProps: meta}); err != nil {
		t.Fatal(err)
	}
}

// A restarted one-job server goes on from the global model an unfinished
// run of the same job saved: the rounds left, from that model. Another
// job's model, a finished run's, or one the server cannot read start the
// run afresh, saying why.
func TestResumeFromLastGlobalModel(t *testing.T) {
	key, _ := persistor.GenerateKey()
	persist := func(t *testing.T) *persistor.SecuredPersistor {
		return &persistor.SecuredPersistor{Path: filepath.Join(t.TempDir(), "model_parameters.pt.enc"), Key: key, Initial: flaretest.InitModel()}
	}
	t.Run("unfinished", func(t *testing.T) {
		p := persist(t)
		saved(t, p, "job-a", 0, 3)
		w, rounds, log := resumeRun(t, p, "job-a")
		if fmt.Sprint(w) != "[13 14 15 16]" || rounds != "[1 2]" || !strings.Contains(log, "resuming: "+p.Path+" holds this job's global model after round 1/3; the run goes on from round 2/3") {
			t.Fatalf("w %v, rounds %v:\n%s", w, rounds, log)
		}
		// What it saved says where it got to: a restart now starts afresh.
		ck, _, _ := p.Last()
		if r, _ := metaValue(ck, "current_round").(int64); r != 2 || metaValue(ck, "flarego_job") != "job-a" {
			t.Fatalf("meta_props %v", ck.MetaProps)
		}
	})
	for _, c := range []struct {
		name, job string
		round     int64
		why       string
	}{
		{"another job", "job-b", 0, "is not this job's"},
		{"finished", "job-a", 2, "is the global model of a finished run of this job (round 3/3)"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := persist(t)
			saved(t, p, c.job, c.round, 3)
			w, rounds, log := resumeRun(t, p, "job-a")
			if fmt.Sprint(w) != "[4 5 6 7]" || rounds != "[0 1 2]" || !strings.Contains(log, c.why) {
				t.Fatalf("w %v, rounds %v:\n%s", w, rounds, log)
			}
		})
	}
	t.Run("sealed to the owner", func(t *testing.T) {
		p := persist(t)
		id, _ := persistor.GenerateIdentity()
		p.Recipients = []age.Recipient{id.Recipient()}
		saved(t, p, "job-a", 0, 3)
		_, rounds, log := resumeRun(t, p, "job-a")
		if rounds != "[0 1 2]" || !strings.Contains(log, "not resuming from the last global model: "+p.Path+" is sealed to the model owners' recipients") {
			t.Fatalf("rounds %v:\n%s", rounds, log)
		}
	})
	t.Run("no model yet", func(t *testing.T) {
		w, rounds, log := resumeRun(t, persist(t), "job-a")
		if fmt.Sprint(w) != "[4 5 6 7]" || rounds != "[0 1 2]" || strings.Contains(log, "resum") {
			t.Fatalf("w %v, rounds %v:\n%s", w, rounds, log)
		}
	})
}
