package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/client"
	"github.com/flarego/flarego/flare/wire20"
	"github.com/flarego/flarego/persistor"
	"github.com/flarego/flarego/persistor/pickle"
)

// FL measures one ScatterAndGather round with many clients that return
// perturbed weights instead of training, over NVFlare 2.0's wire: the
// server runs in a child process (for its peak RSS), the clients here.
func FL(env Env, clients int) error {
	return flRound(env, "fl-server", fmt.Sprintf("%d clients on loopback", clients), clients,
		func(dir, addr string) (func(context.Context, int) error, error) {
			return func(ctx context.Context, i int) error {
				cl := &client.Client{Name: fmt.Sprintf("site-%d", i+1), Target: addr, Wire: wire20.Wire{}, GiveUp: time.Minute, Heartbeat: time.Minute,
					Tasks: map[string]flare.Executor{"train": perturb{seed: uint64(i)}}}
				return cl.Run(ctx)
			}, nil
		})
}

// flRound runs one round of bench fl: the server child op (its args: the
// address, the number of clients and a scratch folder) and clients
// clients, each run by the function prepare makes once the folder and
// the address are known; it prints the round's time, the aggregation
// rate and the server's peak RSS.
func flRound(env Env, op, what string, clients int, prepare func(dir, addr string) (func(context.Context, int) error, error)) error {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	addr := lis.Addr().String()
	lis.Close()
	dir, err := os.MkdirTemp("", "flarego-bench-"+op+"-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	runClient, err := prepare(dir, addr)
	if err != nil {
		return err
	}
	name, a := env.child(op, addr, strconv.Itoa(clients), dir)
	srv := exec.Command(name, a...)
	srv.Stderr = env.Stderr
	out, err := srv.StdoutPipe()
	if err != nil {
		return err
	}
	if err := srv.Start(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	start := time.Now()
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if err := runClient(ctx, i); err != nil {
				errs <- err
			}
		}(i)
	}
	var res struct {
		RoundSeconds float64 `json:"round_seconds"`
		ModelBytes   int64   `json:"model_bytes"`
		PeakRSSKB    int64   `json:"peak_rss_kb"`
	}
	if err := json.NewDecoder(out).Decode(&res); err != nil {
		return fmt.Errorf("bench fl server (%s): %w", op, err)
	}
	wg.Wait()
	if err := srv.Wait(); err != nil {
		return err
	}
	close(errs)
	for err := range errs {
		return err
	}
	rss := float64(res.PeakRSSKB) / 1024
	if res.PeakRSSKB == 0 {
		rss = float64(srv.ProcessState.SysUsage().(*syscall.Rusage).Maxrss) / 1024
	}
	mb := float64(res.ModelBytes) * float64(clients) / 1e6
	fmt.Fprintf(env.Stdout, "flarego bench fl: %s, PneumoniaModel (%.1f MB each way), 1 round, clients return perturbed weights\n", what, float64(res.ModelBytes)/1e6)
	fmt.Fprintf(env.Stdout, "round %.2f s (first task out to model saved), aggregation %.0f MB/s of results, server peak RSS %.0f MB, wall %.2f s\n",
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

// flServer is FL's child: a server for n clients, one round, wait 0.
func flServer(args []string, stdout io.Writer) error {
	if len(args) != 3 {
		return fmt.Errorf("%w: bench --child fl-server ADDR N DIR", ErrUsage)
	}
	n, err := strconv.Atoi(args[1])
	if err != nil {
		return err
	}
	srv, modelBytes, err := benchServer(n, args[2])
	if err != nil {
		return err
	}
	srv.Wire = wire20.ServerWire{}
	return serveRound(srv, args[0], modelBytes, stdout)
}
