package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/client"
	"github.com/flarego/flarego/flare/wire20"
	"github.com/flarego/flarego/persistor/pickle"
)

// rendezvousExecutor marks its site as having its task, waits until the
// other site has its own (so both are live when either answers), then
// returns the weights unchanged or fails.
type rendezvousExecutor struct {
	mine, other chan struct{}
	fail        bool
}

func (e rendezvousExecutor) Execute(ctx context.Context, task string, data *flare.Shareable, _ *flare.FLContext) (*flare.Shareable, error) {
	select {
	case <-e.mine: // a second task: the rendezvous is past
	default:
		close(e.mine)
	}
	select {
	case <-e.other:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if e.fail {
		return nil, errors.New("no image could be read")
	}
	res := flare.NewShareable()
	res.DXO = flare.WeightsDXO(data.DXO.StateDict(), &pickle.Dict{Items: []pickle.Item{{Key: flare.MetaNumStepsCurrentRound, Value: int64(1)}}})
	return res, nil
}

// server --job with two sites, one of which fails its task: the other
// carries the round (min_clients 1), the model is saved, and the server
// names the lost site and exits non-zero.
func TestServerJobExitsNonZeroWhenASiteFails(t *testing.T) {
	dir := t.TempDir()
	td, _ := filepath.Abs(filepath.Join("..", "testdata"))
	key := filepath.Join(td, "fernet", "key.txt")
	target := freeAddr(t)
	job := writeJob(t, dir, key)
	srvWS := filepath.Join(dir, "server")
	os.MkdirAll(filepath.Join(srvWS, "startup"), 0o755)
	os.WriteFile(filepath.Join(srvWS, "startup", "fed_server.json"),
		[]byte(fmt.Sprintf(`{"format_version": 2, "servers": [{"name": "example_project", "service": {"target": %q}}]}`, target)), 0o644)
	os.MkdirAll(filepath.Join(dir, "output"), 0o755)

	var out bytes.Buffer
	rc := make(chan int, 1)
	go func() {
		rc <- run([]string{"server", "-m", srvWS, "--job", job, "--key-file", key, "--output", filepath.Join(dir, "output"),
			"--set", "min_clients=1", "--set", "wait_time_after_min_received=30"}, &out, &out)
	}()
	good, bad := make(chan struct{}), make(chan struct{})
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, ex := range []rendezvousExecutor{{mine: good, other: bad}, {mine: bad, other: good, fail: true}} {
		c := &client.Client{Name: fmt.Sprintf("site-%d", i+1), Target: target, Wire: wire20.Wire{}, Tasks: map[string]flare.Executor{"train": ex}, GiveUp: 20 * time.Second}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.Run(context.Background())
		}()
	}
	wg.Wait()
	code := <-rc
	log := out.String()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("site-%d: %v\nserver:\n%s", i+1, err, log)
		}
	}
	if !strings.Contains(log, "round 1/1 done: aggregated 1 result(s)") {
		t.Fatalf("server log:\n%s", log)
	}
	if code == 0 || !strings.Contains(log, "the run lost 1 of 2 site(s): site-2: task train (round 1/1) failed with EXECUTION_EXCEPTION") {
		t.Fatalf("server exited %d:\n%s", code, log)
	}
	if _, err := os.Stat(filepath.Join(dir, "output", "model_parameters.pt.enc")); err != nil {
		t.Fatal(err)
	}
}
