package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/flarego/flarego/model"
)

// ModelOptions are Model's: the batch sizes, the timed steps per run
// (after 2 warm-up steps), the runs per measurement (the median is
// reported), a Python with torch ("" to skip it), and a Debian 13 root
// with torch 2.6 and onnxruntime ("" to skip them; scripts/debian13-root.sh
// makes one, and running in it needs root).
type ModelOptions struct {
	Batches []string
	Steps   int
	Repeat  int
	Python  string
	Root    string
}

// modelPeer is one side of the comparison.
type modelPeer struct {
	name string
	env  []string
	ops  map[string]bool // the ops it runs (nil: train and infer)
	cmd  func(op, batch string) (string, []string)
}

// Model measures PneumoniaModel training and inference throughput in Go,
// in PyTorch 1.13 (Debian 12's, as installed and tuned), in PyTorch 2.6 (as
// installed and tuned) and onnxruntime 1.21 (inference) from the Debian 13
// root, each in fresh processes, in one run, with Go's ratio to each.
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
	peers := []modelPeer{{name: "go", cmd: func(op, b string) (string, []string) {
		return env.child(op, b, strconv.Itoa(opt.Steps))
	}}}
	steps := strconv.Itoa(opt.Steps)
	if opt.Python != "" {
		v := pythonVersion(opt.Python, nil, "torch")
		peers = append(peers, modelPeer{name: "torch " + v, cmd: func(op, b string) (string, []string) {
			return opt.Python, []string{script, op, b, steps}
		}})
		// PyTorch as installed loses 3-4x here to its allocator and BLAS
		// threads; with jemalloc, one BLAS thread and two intra-op threads
		// it reaches its best. Both are reported.
		if _, err := os.Stat(jemalloc); err == nil {
			peers = append(peers, modelPeer{name: "torch " + v + " tuned", env: tunedEnv, cmd: func(op, b string) (string, []string) {
				return opt.Python, []string{script, op, b, steps, "2"}
			}})
		} else {
			fmt.Fprintf(env.Stderr, "note: %s not found (Debian package libjemalloc2): tuned PyTorch %s not measured\n", jemalloc, v)
		}
	}
	if opt.Root != "" {
		rp, err := rootPeers(opt.Root, steps)
		if err != nil {
			fmt.Fprintf(env.Stderr, "note: torch 2.6 and onnxruntime not measured: %v\n", err)
		}
		peers = append(peers, rp...)
	}
	w := env.Stdout
	fmt.Fprintf(w, "flarego bench model: PneumoniaModel, 3x224x224, %d timed steps after 2 warm-up, median of %d fresh processes\n", opt.Steps, opt.Repeat)
	fmt.Fprintf(w, "%-6s %-6s %-26s %10s %9s %8s %9s\n", "op", "batch", "peer", "img/s", "go/peer", "peak MB", "MB/go MB")
	for _, op := range []string{"train", "infer"} {
		for _, b := range opt.Batches {
			rate := map[string]float64{}
			rss := map[string]float64{}
			var ran []string
			for _, p := range peers {
				if p.ops != nil && !p.ops[op] {
					continue
				}
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
				ran = append(ran, p.name)
			}
			for _, name := range ran {
				ratio, mem := "-", "-"
				if name != "go" {
					ratio = fmt.Sprintf("%.2fx", rate["go"]/rate[name])
					mem = fmt.Sprintf("%.2f", rss[name]/rss["go"])
				}
				fmt.Fprintf(w, "%-6s %-6s %-26s %10.1f %9s %8.0f %9s\n", op, b, name, rate[name], ratio, rss[name], mem)
			}
		}
	}
	return nil
}

// tunedEnv is PyTorch at its best here: jemalloc, one BLAS thread (and two
// intra-op threads, an argument of the script).
var tunedEnv = []string{"LD_PRELOAD=" + jemalloc, "MALLOC_CONF=oversize_threshold:0,dirty_decay_ms:-1,muzzy_decay_ms:-1", "OPENBLAS_NUM_THREADS=1"}

// rootPeers are torch 2.6 (as installed and tuned) and onnxruntime, run in
// the Debian 13 root with chroot (the script is copied into the root).
func rootPeers(root, steps string) ([]modelPeer, error) {
	if _, err := os.Stat(filepath.Join(root, "usr/bin/python3")); err != nil {
		return nil, fmt.Errorf("no Debian 13 root at %s (make debian13-root)", root)
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("running in the Debian 13 root needs root (chroot)")
	}
	dir, err := os.MkdirTemp(filepath.Join(root, "tmp"), "flarego-bench-")
	if err != nil {
		return nil, err
	}
	// Left in the root's /tmp: the bench runs the peers after this returns.
	if err := os.WriteFile(filepath.Join(dir, "bench_model.py"), benchModelPy, 0o644); err != nil {
		return nil, err
	}
	script := "/tmp/" + filepath.Base(dir) + "/bench_model.py"
	in := func(extra ...string) func(op, b string) (string, []string) {
		return func(op, b string) (string, []string) {
			args := []string{root, "/usr/bin/env", "-i", "PATH=/usr/bin:/bin", "HOME=/tmp", "LANG=C.UTF-8"}
			args = append(args, extra...)
			return "chroot", append(args, "python3", script, op, b, steps)
		}
	}
	chrootEnv := []string{root, "/usr/bin/env", "-i", "PATH=/usr/bin:/bin", "HOME=/tmp", "LANG=C.UTF-8"}
	tv := pythonVersion("chroot", chrootEnv, "torch")
	ov := pythonVersion("chroot", chrootEnv, "onnxruntime")
	withThreads := func(f func(op, b string) (string, []string)) func(op, b string) (string, []string) {
		return func(op, b string) (string, []string) {
			name, a := f(op, b)
			return name, append(a, "2")
		}
	}
	peers := []modelPeer{{name: "torch " + tv, cmd: in()}}
	if _, err := os.Stat(filepath.Join(root, jemalloc)); err == nil {
		peers = append(peers, modelPeer{name: "torch " + tv + " tuned", cmd: withThreads(in(tunedEnv...))})
	}
	infer := map[string]bool{"infer": true}
	peers = append(peers, modelPeer{name: "onnxruntime " + ov, ops: infer, cmd: withThreads(func(op, b string) (string, []string) {
		return in()("ort", b)
	})})
	return peers, nil
}

// pythonVersion is module's __version__ as python (with args before the
// interpreter's) prints it, "?" when it cannot say.
func pythonVersion(python string, pre []string, module string) string {
	args := append(append([]string(nil), pre...), "python3", "-c", "import "+module+"; print("+module+".__version__)")
	name := python
	if len(pre) == 0 {
		args = args[1:]
	}
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		return "?"
	}
	v := strings.TrimSpace(string(out))
	if i := strings.IndexAny(v, "+"); i > 0 {
		v = v[:i]
	}
	return v
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
