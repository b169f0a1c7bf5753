package main

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/persistor"
)

// trainRecord is one train task as a site saw it: the global weights it
// got and the weights and step count it returned.
type trainRecord struct {
	site    string
	round   int64
	in, out *persistor.StateDict
	steps   int64
}

type recordingExecutor struct {
	site string
	ex   flare.Executor
	mu   *sync.Mutex
	log  *[]trainRecord
}

func cloneSD(sd *persistor.StateDict) *persistor.StateDict {
	out := persistor.NewStateDict()
	for _, n := range sd.Names() {
		t := sd.Get(n)
		out.Set(n, &persistor.Tensor{DType: t.DType, Shape: append([]int(nil), t.Shape...), Data: append([]byte(nil), t.Data...)})
	}
	return out
}

func (r recordingExecutor) Execute(ctx context.Context, task string, data *flare.Shareable, fl *flare.FLContext) (*flare.Shareable, error) {
	var in *persistor.StateDict
	if data.DXO != nil {
		in = cloneSD(data.DXO.StateDict())
	}
	res, err := r.ex.Execute(ctx, task, data, fl)
	if err != nil || task != "train" || res.DXO == nil {
		return res, err
	}
	round, _ := data.Header(flare.HeaderCurrentRound)
	steps, _ := res.DXO.NumSteps()
	r.mu.Lock()
	*r.log = append(*r.log, trainRecord{site: r.site, round: round.(int64), in: in, out: cloneSD(res.DXO.StateDict()), steps: steps})
	r.mu.Unlock()
	return res, nil
}

// weightedMean is the NUM_STEPS-weighted mean of the round's results for
// one float32 tensor, in float64.
func weightedMean(recs []trainRecord, name string) []float64 {
	var sum []float64
	var total float64
	for _, r := range recs {
		f, _ := r.out.Get(name).Float32s()
		if sum == nil {
			sum = make([]float64, len(f))
		}
		for i, v := range f {
			sum[i] += float64(r.steps) * float64(v)
		}
		total += float64(r.steps)
	}
	for i := range sum {
		sum[i] /= total
	}
	return sum
}

// The end-to-end run the issue asks for: flarego simulate, 2 clients with
// different amounts of data, 2 rounds, the real trainer over loopback
// gRPC. Each round's global model is the NUM_STEPS-weighted mean of what
// the sites returned (round 1's is what round 2's tasks carry; round 2's
// is the file), and the file is a Fernet token of an NVFlare checkpoint.
func TestSimulateTwoRoundsWeightedMean(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join("..", "testdata", "fernet", "key.txt")
	job := writeJob(t, dir, key)
	var out bytes.Buffer
	for i, n := range []int{2, 4} { // 4 and 8 images: 1 and 2 steps of 4
		if rc := run([]string{"samples", "--n", fmt.Sprint(n), "--seed", fmt.Sprint(i + 1), filepath.Join(dir, "data", fmt.Sprintf("site-%d", i+1))}, &out, &out); rc != 0 {
			t.Fatal(out.String())
		}
	}
	var mu sync.Mutex
	var log []trainRecord
	simulateObserver = func(site string, ex flare.Executor) flare.Executor {
		return recordingExecutor{site: site, ex: ex, mu: &mu, log: &log}
	}
	defer func() { simulateObserver = nil }()
	output := filepath.Join(dir, "output")
	os.MkdirAll(output, 0o755)
	t.Setenv("FLAREGO_OUTPUT", output)
	if rc := run([]string{"simulate", job, "-n", "2", "--data", filepath.Join(dir, "data"), "--key-file", key,
		"--set", "wait_time_after_min_received=0", "--set", "num_rounds=2"}, &out, &out); rc != 0 {
		t.Fatalf("simulate: exit %d\n%s", rc, out.String())
	}
	byRound := map[int64][]trainRecord{}
	for _, r := range log {
		byRound[r.round] = append(byRound[r.round], r)
	}
	if len(byRound[0]) != 2 || len(byRound[1]) != 2 {
		t.Fatalf("train tasks per round: %d, %d; want 2, 2", len(byRound[0]), len(byRound[1]))
	}
	if byRound[0][0].steps == byRound[0][1].steps {
		t.Fatalf("both sites report %d steps: the weighting is not exercised", byRound[0][0].steps)
	}
	b, _ := os.ReadFile(key)
	k, err := persistor.ParseKey(string(bytes.TrimSpace(b)))
	if err != nil {
		t.Fatal(err)
	}
	ck, err := persistor.ReadCheckpointFile(filepath.Join(output, "model_parameters.pt.enc"), k)
	if err != nil {
		t.Fatal(err)
	}
	check := func(what string, got *persistor.StateDict, recs []trainRecord) {
		checked := 0
		for _, name := range got.Names() {
			g := got.Get(name)
			if g.DType != persistor.Float32 {
				continue // num_batches_tracked: NVFlare's aggregator makes it float64
			}
			gv, _ := g.Float32s()
			want := weightedMean(recs, name)
			for i := range want {
				if math.Abs(float64(gv[i])-want[i]) > 1e-6*math.Max(1, math.Abs(want[i])) {
					t.Fatalf("%s: %s[%d] = %v, weighted mean %v", what, name, i, gv[i], want[i])
				}
			}
			checked++
		}
		if checked < 10 {
			t.Fatalf("%s: only %d float tensors compared", what, checked)
		}
	}
	check("round 1 global (round 2's task)", byRound[1][0].in, byRound[0])
	check("round 2 global (the saved model)", ck.Model, byRound[1])
}
