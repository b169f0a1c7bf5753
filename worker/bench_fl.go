package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/model"
	"github.com/flarego/flarego/persistor"
	"github.com/flarego/flarego/persistor/pickle"
)

// benchFL measures one ScatterAndGather round with many clients that return
// perturbed weights instead of training: the server runs in a child process
// (for its peak RSS), the clients here.
func (c *command) benchFL(args []string) error {
	fs := c.flags("bench fl", "[--clients N]")
	clients := fs.Int("clients", 200, "clients")
	if _, err := parse(fs, args, 0, 0); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	addr := lis.Addr().String()
	lis.Close()
	dir, err := os.MkdirTemp("", "flarego-bench-fl-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	srv := exec.Command(self, "bench", "--child", "fl-server", addr, strconv.Itoa(*clients), dir)
	srv.Stderr = c.stderr
	out, err := srv.StdoutPipe()
	if err != nil {
		return err
	}
	if err := srv.Start(); err != nil {
		return err
	}
	var wg sync.WaitGroup
	errs := make(chan error, *clients)
	start := time.Now()
	for i := 0; i < *clients; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			cl := &flare.Client{Name: fmt.Sprintf("site-%d", i+1), Target: addr, GiveUp: time.Minute, Heartbeat: time.Minute,
				Tasks: map[string]flare.Executor{"train": perturb{seed: uint64(i)}}}
			if err := cl.Run(context.Background()); err != nil {
				errs <- err
			}
		}(i)
	}
	var res struct {
		RoundSeconds float64 `json:"round_seconds"`
		ModelBytes   int64   `json:"model_bytes"`
	}
	if err := json.NewDecoder(out).Decode(&res); err != nil {
		return fmt.Errorf("bench fl server: %w", err)
	}
	wg.Wait()
	if err := srv.Wait(); err != nil {
		return err
	}
	close(errs)
	for err := range errs {
		return err
	}
	rss := float64(srv.ProcessState.SysUsage().(*syscall.Rusage).Maxrss) / 1024
	mb := float64(res.ModelBytes) * float64(*clients) / 1e6
	fmt.Fprintf(c.stdout, "flarego bench fl: %d clients on loopback, PneumoniaModel (%.1f MB each way), 1 round, clients return perturbed weights\n", *clients, float64(res.ModelBytes)/1e6)
	fmt.Fprintf(c.stdout, "round %.2f s (first task out to model saved), aggregation %.0f MB/s of results, server peak RSS %.0f MB, wall %.2f s\n",
		res.RoundSeconds, mb/res.RoundSeconds, rss, time.Since(start).Seconds())
	return nil
}

type perturb struct{ seed uint64 }

func (p perturb) Execute(ctx context.Context, task string, data *flare.Shareable, fl *flare.FLContext) (*flare.Shareable, error) {
	rng := rand.New(rand.NewPCG(p.seed, 1))
	sd := persistor.NewStateDict()
	for _, a := range data.DXO.Data {
		t := a.Array
		if t.DType == persistor.Float32 {
			v, _ := t.Float32s()
			w := make([]float32, len(v))
			for i := range v {
				w[i] = v[i] + float32(rng.NormFloat64())*1e-3
			}
			t = persistor.FromFloat32(w, t.Shape...)
		}
		sd.Set(a.Name, t)
	}
	out := flare.NewShareable()
	out.DXO = flare.WeightsDXO(sd, &pickle.Dict{Items: []pickle.Item{{Key: flare.MetaNumStepsCurrentRound, Value: int64(1 + p.seed%5)}}})
	return out, nil
}

// benchFLServer is the child: a server for n clients, one round, wait 0.
func (c *command) benchFLServer(args []string) error {
	if len(args) != 3 {
		return fmt.Errorf("%w: bench --child fl-server ADDR N DIR", errUsage)
	}
	n, err := strconv.Atoi(args[1])
	if err != nil {
		return err
	}
	k, err := persistor.GenerateKey()
	if err != nil {
		return err
	}
	spec := model.PneumoniaSpec()
	var modelBytes int64
	reg := &flare.Registry{Persistors: map[string]func(json.RawMessage) (flare.ModelPersistor, error){
		pathPersistor: func(json.RawMessage) (flare.ModelPersistor, error) {
			return &persistor.SecuredPersistor{Path: filepath.Join(args[2], "model_parameters.pt.enc"), Key: k, ModelName: spec.Name,
				Init: func() (*persistor.StateDict, error) {
					sd, err := model.Init(spec, 1)
					if err == nil {
						modelBytes = sd.Bytes()
					}
					return sd, err
				}}, nil
		}}}
	var cfg flare.ServerConfig
	raw := fmt.Sprintf(`{"format_version": 2, "components": [
 {"id": "persistor", "path": %q, "args": {}},
 {"id": "shareable_generator", "path": %q, "args": {}},
 {"id": "aggregator", "path": %q, "args": {}}],
 "workflows": [{"id": "sag", "path": %q, "args": {"min_clients": %d, "num_rounds": 1, "wait_time_after_min_received": 0}}]}`,
		pathPersistor, flare.PathFullModelGenerator, flare.PathWeightedAggregator, flare.PathScatterAndGather, n)
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		return err
	}
	srv, err := flare.NewServer(&cfg, reg)
	if err != nil {
		return err
	}
	var roundStart time.Time
	var roundSeconds float64
	srv.Logf = func(format string, a ...any) {
		msg := fmt.Sprintf(format, a...)
		switch {
		case len(msg) > 7 && msg[:7] == "round 1" && roundStart.IsZero():
			roundStart = time.Now()
		case len(msg) > 12 && msg[:12] == "round 1/1 do":
			roundSeconds = time.Since(roundStart).Seconds()
		}
	}
	lis, err := net.Listen("tcp", args[0])
	if err != nil {
		return err
	}
	if err := srv.Serve(context.Background(), lis); err != nil {
		return err
	}
	return json.NewEncoder(c.stdout).Encode(map[string]any{"round_seconds": roundSeconds, "model_bytes": modelBytes})
}
