//go:build recordresults

// A build for the interop tests only (go build -tags recordresults): each
// train result a site sends is also written to $FLAREGO_RECORD_DIR, in
// plaintext, so that a test can compare the server's aggregate with what
// the sites sent. Never in a release build: it writes the weights to disk.

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/persistor"
)

func init() {
	dir := os.Getenv("FLAREGO_RECORD_DIR")
	if dir == "" {
		return
	}
	wrapExecutor = func(site, task string, ex flare.Executor) flare.Executor {
		if task != "train" {
			return ex
		}
		return &recorder{ex: ex, dir: dir, site: site}
	}
}

type recorder struct {
	ex    flare.Executor
	dir   string
	site  string
	round atomic.Int64
}

func (r *recorder) Execute(ctx context.Context, task string, data *flare.Shareable, fl *flare.FLContext) (*flare.Shareable, error) {
	res, err := r.ex.Execute(ctx, task, data, fl)
	if err != nil || res == nil || res.DXO == nil {
		return res, err
	}
	site := r.site
	round := r.round.Add(1) - 1
	if v, ok := data.Header(flare.HeaderCurrentRound); ok {
		if n, ok := v.(int64); ok {
			round = n
		}
	}
	steps, _ := res.DXO.NumSteps()
	out := filepath.Join(r.dir, fmt.Sprintf("round-%d", round))
	os.MkdirAll(out, 0o755)
	f, ferr := os.Create(filepath.Join(out, site+".pt"))
	if ferr == nil {
		ferr = persistor.WritePT(f, res.DXO.StateDict(), persistor.PTOptions{})
		f.Close()
	}
	j, _ := json.Marshal(map[string]any{"site": site, "num_steps": steps, "weights": site + ".pt"})
	if ferr == nil {
		ferr = os.WriteFile(filepath.Join(out, site+".json"), j, 0o644)
	}
	if ferr != nil {
		fmt.Fprintln(os.Stderr, "recordresults:", ferr)
	}
	return res, err
}
