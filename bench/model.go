package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/flarego/flarego/model"
)

// ModelOptions are Model's: the batch sizes, the timed steps per run
// (after 2 warm-up steps), the runs per measurement (the median is
// reported), and a Python with torch ("" to skip it).
type ModelOptions struct {
	Batches []string
	Steps   int
	Repeat  int
	Python  string
}

// Model measures PneumoniaModel training and inference throughput in Go
// and in PyTorch (as installed, and tuned when jemalloc is there), each in
// fresh processes, side by side.
func Model(env Env, opt ModelOptions) error {
	dir, err := os.MkdirTemp("", "flarego-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	script := filepath.Join(dir, "bench_model.py")
	if err := os.WriteFile(script, benchModelPy, 0o600); err != nil {
		return err
	}
	type peer struct {
		name string
		env  []string
		cmd  func(op, batch string) (string, []string)
	}
	peers := []peer{{"go", nil, func(op, b string) (string, []string) {
		return env.child(op, b, strconv.Itoa(opt.Steps))
	}}}
	if opt.Python != "" {
		peers = append(peers, peer{"torch", nil, func(op, b string) (string, []string) {
			return opt.Python, []string{script, op, b, strconv.Itoa(opt.Steps)}
		}})
		// PyTorch as installed loses 3-4x here to its allocator and BLAS
		// threads; with jemalloc, one BLAS thread and two intra-op threads
		// it reaches its best. Both are reported.
		if _, err := os.Stat(jemalloc); err == nil {
			peers = append(peers, peer{"tuned", []string{"LD_PRELOAD=" + jemalloc,
				"MALLOC_CONF=oversize_threshold:0,dirty_decay_ms:-1,muzzy_decay_ms:-1", "OPENBLAS_NUM_THREADS=1"},
				func(op, b string) (string, []string) {
					return opt.Python, []string{script, op, b, strconv.Itoa(opt.Steps), "2"}
				}})
		} else {
			fmt.Fprintf(env.Stderr, "note: %s not found (Debian package libjemalloc2): tuned PyTorch not measured\n", jemalloc)
		}
	}
	w := env.Stdout
	fmt.Fprintf(w, "flarego bench model: PneumoniaModel, 3x224x224, %d timed steps after 2 warm-up, median of %d fresh processes\n", opt.Steps, opt.Repeat)
	fmt.Fprintf(w, "%-6s %-6s %10s %10s %8s %10s %8s %8s %9s\n", "op", "batch", "go img/s", "torch", "go/torch", "tuned", "go/tuned", "go MB", "torch MB")
	for _, op := range []string{"train", "infer"} {
		for _, b := range opt.Batches {
			rate := map[string]float64{}
			rss := map[string]float64{}
			for _, p := range peers {
				var m measurement
				for i := 0; i < opt.Repeat; i++ {
					fmt.Fprintf(env.Stderr, "  %s %s batch %s run %d/%d\n", p.name, op, b, i+1, opt.Repeat)
					name, a := p.cmd(op, b)
					s, r, err := runChildEnv(p.env, name, a...)
					if err != nil {
						return err
					}
					bn, _ := strconv.Atoi(b)
					m.seconds = append(m.seconds, float64(bn*opt.Steps)/s) // images per second
					m.rssMB = append(m.rssMB, r)
				}
				rate[p.name], rss[p.name] = m.median()
			}
			col := func(name string, ratio bool) string {
				v, ok := rate[name]
				if !ok {
					return "-"
				}
				if ratio {
					return fmt.Sprintf("%.2fx", rate["go"]/v)
				}
				return fmt.Sprintf("%.1f", v)
			}
			torchMB := "-"
			if r, ok := rss["torch"]; ok {
				torchMB = fmt.Sprintf("%.0f", r)
			}
			fmt.Fprintf(w, "%-6s %-6s %10.1f %10s %8s %10s %8s %8.0f %9s\n", op, b, rate["go"], col("torch", false), col("torch", true),
				col("tuned", false), col("tuned", true), rss["go"], torchMB)
		}
	}
	return nil
}

const jemalloc = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"

// modelChild times steps of training or inference in this process.
func modelChild(args []string, stdout io.Writer) error {
	batch, err1 := strconv.Atoi(args[1])
	steps, err2 := strconv.Atoi(args[2])
	if err1 != nil || err2 != nil || batch <= 0 || steps <= 0 {
		return fmt.Errorf("%w: bench --child train|infer BATCH STEPS", ErrUsage)
	}
	spec := model.PneumoniaSpec()
	sd, err := model.Init(spec, 1)
	if err != nil {
		return err
	}
	net, err := model.NewNet(spec, sd, batch)
	if err != nil {
		return err
	}
	rng := rand.New(rand.NewPCG(1, 2))
	x := make([]float32, batch*3*224*224)
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	labels := make([]int, batch)
	for i := range labels {
		labels[i] = rng.IntN(2)
	}
	opt := model.NewAdam(net.Params(), 0.001)
	// The Gorgonia graph, as train and infer run it.
	gr, err := net.NewGraph(batch, args[0] == "train")
	if err != nil {
		return err
	}
	defer gr.Close()
	step := func() error {
		if args[0] == "infer" {
			_, _, err := gr.Run(x, nil)
			return err
		}
		net.ZeroGrad()
		if _, _, err := gr.Run(x, labels); err != nil {
			return err
		}
		return opt.Step(net.Params())
	}
	for i := 0; i < 2; i++ {
		if err := step(); err != nil {
			return err
		}
	}
	t0 := time.Now()
	for i := 0; i < steps; i++ {
		if err := step(); err != nil {
			return err
		}
	}
	return json.NewEncoder(stdout).Encode(map[string]float64{"seconds": time.Since(t0).Seconds(), "images": float64(batch * steps)})
}
