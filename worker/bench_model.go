package main

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/flarego/flarego/model"
)

// benchModel measures PneumoniaModel training and inference throughput in Go
// and in PyTorch, each in fresh processes, side by side.
func (c *command) benchModel(args []string) error {
	fs := c.flags("bench model", "[--batches 4,16] [--steps N] [--repeat N] [--python PATH]")
	batches := fs.String("batches", "4,16", "batch sizes")
	steps := fs.Int("steps", 10, "timed steps per run (after 2 warm-up steps)")
	repeat := fs.Int("repeat", 3, "runs per measurement (the median is reported)")
	python := fs.String("python", "/usr/bin/python3", "Python with torch, for the side-by-side ('' to skip)")
	if _, err := parse(fs, args, 0, 0); err != nil {
		return err
	}
	self, dir, err := benchSetup()
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
		return self, []string{"bench", "--child", op, b, strconv.Itoa(*steps)}
	}}}
	if *python != "" {
		peers = append(peers, peer{"torch", nil, func(op, b string) (string, []string) {
			return *python, []string{script, op, b, strconv.Itoa(*steps)}
		}})
		// PyTorch as installed loses 3-4x here to its allocator and BLAS
		// threads; with jemalloc, one BLAS thread and two intra-op threads
		// it reaches its best. Both are reported.
		if _, err := os.Stat(jemalloc); err == nil {
			peers = append(peers, peer{"tuned", []string{"LD_PRELOAD=" + jemalloc,
				"MALLOC_CONF=oversize_threshold:0,dirty_decay_ms:-1,muzzy_decay_ms:-1", "OPENBLAS_NUM_THREADS=1"},
				func(op, b string) (string, []string) {
					return *python, []string{script, op, b, strconv.Itoa(*steps), "2"}
				}})
		} else {
			fmt.Fprintf(c.stderr, "note: %s not found (Debian package libjemalloc2): tuned PyTorch not measured\n", jemalloc)
		}
	}
	w := c.stdout
	fmt.Fprintf(w, "flarego bench model: PneumoniaModel, 3x224x224, %d timed steps after 2 warm-up, median of %d fresh processes\n", *steps, *repeat)
	fmt.Fprintf(w, "%-6s %-6s %10s %10s %8s %10s %8s %8s %9s\n", "op", "batch", "go img/s", "torch", "go/torch", "tuned", "go/tuned", "go MB", "torch MB")
	for _, op := range []string{"train", "infer"} {
		for _, b := range strings.Split(*batches, ",") {
			rate := map[string]float64{}
			rss := map[string]float64{}
			for _, p := range peers {
				var m measurement
				for i := 0; i < *repeat; i++ {
					fmt.Fprintf(c.stderr, "  %s %s batch %s run %d/%d\n", p.name, op, b, i+1, *repeat)
					name, a := p.cmd(op, b)
					s, r, err := runChildEnv(p.env, name, a...)
					if err != nil {
						return err
					}
					bn, _ := strconv.Atoi(b)
					m.seconds = append(m.seconds, float64(bn**steps)/s) // images per second
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

// benchModelChild times steps of training or inference in this process.
func (c *command) benchModelChild(args []string) error {
	batch, err1 := strconv.Atoi(args[1])
	steps, err2 := strconv.Atoi(args[2])
	if err1 != nil || err2 != nil || batch <= 0 || steps <= 0 {
		return fmt.Errorf("%w: bench --child train|infer BATCH STEPS", errUsage)
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
	return json.NewEncoder(c.stdout).Encode(map[string]float64{"seconds": time.Since(t0).Seconds(), "images": float64(batch * steps)})
}
