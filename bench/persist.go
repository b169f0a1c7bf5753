// Package bench measures flarego against its Python peers: encrypted
// model save and load against torch.save + cryptography ([Persist]),
// training and inference throughput against PyTorch ([Model]), and one
// federated round with many clients ([FL]). Each measurement runs in fresh
// processes, so that their peak RSS is their own: the command calls
// [Child] in the child process, and [Env] says how to start one.
//
// Promise: a measurement prints one header line and one table row per
// case to [Env].Stdout, in a format that does not change (the README's
// tables are made from it), and progress to [Env].Stderr; the times
// reported are the operations alone (a child reports its own), RSS is the
// child's peak; scratch files go to a temporary folder that is removed.
package bench

import (
	"bytes"
	"crypto/rand"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/flarego/flarego/persistor"
)

// ErrUsage marks a malformed child command line (the parent makes them,
// so this is a mismatch between binaries, or a person typing one).
var ErrUsage = errors.New("usage")

// Env is where a measurement writes and how it starts its children.
type Env struct {
	Stdout io.Writer // the table
	Stderr io.Writer // progress, and the children's errors
	// Child is the command line that runs Child in a fresh process, before
	// the child's own arguments: e.g. {"/usr/bin/flarego", "bench", "--child"}.
	Child []string
}

// child is the command line of one child operation.
func (e Env) child(args ...string) (string, []string) {
	return e.Child[0], append(append([]string(nil), e.Child[1:]...), args...)
}

// PersistOptions are Persist's: the state dicts to save and load
// (pneumonia, 256MB, 2GB), the runs per measurement (the median is
// reported), and a Python with torch and cryptography ("" to skip it).
type PersistOptions struct {
	Cases  []string
	Repeat int
	Python string
}

//go:embed bench_persist.py
var benchPersistPy []byte

//go:embed bench_model.py
var benchModelPy []byte

// pneumoniaShapes are the state-dict shapes of the seed's PneumoniaModel.
var pneumoniaShapes = []struct {
	name  string
	shape []int
}{
	{"conv1.weight", []int{12, 3, 3, 3}}, {"conv1.bias", []int{12}},
	{"bn1.weight", []int{12}}, {"bn1.bias", []int{12}}, {"bn1.running_mean", []int{12}}, {"bn1.running_var", []int{12}},
	{"bn1.num_batches_tracked", nil},
	{"conv2.weight", []int{20, 12, 3, 3}}, {"conv2.bias", []int{20}},
	{"conv3.weight", []int{32, 20, 3, 3}}, {"conv3.bias", []int{32}},
	{"bn3.weight", []int{32}}, {"bn3.bias", []int{32}}, {"bn3.running_mean", []int{32}}, {"bn3.running_var", []int{32}},
	{"bn3.num_batches_tracked", nil},
	{"fc.weight", []int{2, 401408}}, {"fc.bias", []int{2}},
}

func randomStateDict(name string) (*persistor.StateDict, error) {
	sd := persistor.NewStateDict()
	add := func(n string, dt persistor.DType, shape ...int) error {
		t, err := persistor.NewTensor(dt, shape...)
		if err != nil {
			return err
		}
		if dt == persistor.Float32 {
			// Random finite floats: random mantissa and sign, exponent near 1.
			rand.Read(t.Data)
			for i := 3; i < len(t.Data); i += 4 {
				t.Data[i] = t.Data[i]&0x80 | 0x3f
			}
		}
		sd.Set(n, t)
		return nil
	}
	switch name {
	case "pneumonia":
		for _, p := range pneumoniaShapes {
			dt := persistor.Float32
			if p.shape == nil {
				dt = persistor.Int64
			}
			if err := add(p.name, dt, p.shape...); err != nil {
				return nil, err
			}
		}
	case "256MB", "2GB":
		n := 16
		if name == "2GB" {
			n = 128
		}
		for i := 0; i < n; i++ {
			if err := add(fmt.Sprintf("layer%d.weight", i), persistor.Float32, 4096, 1024); err != nil {
				return nil, err
			}
		}
	default:
		return nil, fmt.Errorf("unknown bench case %q (have pneumonia, 256MB, 2GB)", name)
	}
	return sd, nil
}

type measurement struct {
	seconds []float64
	rssMB   []float64
}

func (m measurement) median() (float64, float64) {
	med := func(v []float64) float64 {
		s := append([]float64(nil), v...)
		sort.Float64s(s)
		return s[len(s)/2]
	}
	return med(m.seconds), med(m.rssMB)
}

// runChild runs one timed operation in a fresh process and returns the time
// it reports and the process's peak RSS.
func runChild(name string, args ...string) (float64, float64, error) {
	return runChildEnv(nil, name, args...)
}

// runChildEnv is runChild with extra environment variables.
func runChildEnv(env []string, name string, args ...string) (float64, float64, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return 0, 0, fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	var r struct{ Seconds float64 }
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		return 0, 0, fmt.Errorf("%s: unreadable result %q", name, out.String())
	}
	ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	if !ok {
		return 0, 0, errors.New("no resource usage on this platform")
	}
	return r.Seconds, float64(ru.Maxrss) / 1024, nil
}

// Persist measures the secured persistor's save (encrypt, write, fsync)
// and load (read, decrypt, unpickle) of each case, side by side with
// Python's torch.save + Fernet.
func Persist(env Env, opt PersistOptions) error {
	dir, err := os.MkdirTemp("", "flarego-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	k, err := persistor.GenerateKey()
	if err != nil {
		return err
	}
	keyFile := filepath.Join(dir, "key")
	os.WriteFile(keyFile, []byte(k.Encode()), 0o600)
	script := filepath.Join(dir, "bench_persist.py")
	os.WriteFile(script, benchPersistPy, 0o600)

	w := env.Stdout
	fmt.Fprintf(w, "flarego bench persist: median of %d runs, each in a fresh process; time is the operation alone, RSS is the process's peak\n", opt.Repeat)
	fmt.Fprintf(w, "%-10s %-5s %10s %10s %8s %10s %10s %8s\n", "case", "op", "go s", "python s", "speedup", "go MB", "python MB", "RSS go/py")
	for _, name := range opt.Cases {
		sd, err := randomStateDict(name)
		if err != nil {
			return err
		}
		plain := filepath.Join(dir, name+".pt")
		f, err := os.Create(plain)
		if err != nil {
			return err
		}
		if err := persistor.WritePT(f, &persistor.Checkpoint{Model: sd}, persistor.PTOptions{}); err != nil {
			return err
		}
		f.Close()
		sd = nil
		fmt.Fprintf(env.Stderr, "case %s: %s\n", name, humanBytes(fileSize(plain)))
		goEnc, pyEnc := filepath.Join(dir, name+".go.enc"), filepath.Join(dir, name+".py.enc")
		ops := []struct {
			op     string
			goArgs []string
			pyArgs []string
		}{
			{"save", []string{"save", plain, keyFile, goEnc}, []string{script, "save", plain, keyFile, pyEnc}},
			{"load", []string{"load", goEnc, keyFile}, []string{script, "load", pyEnc, keyFile}},
		}
		for _, op := range ops {
			var g, p measurement
			for i := 0; i < opt.Repeat; i++ {
				fmt.Fprintf(env.Stderr, "  %s run %d/%d\n", op.op, i+1, opt.Repeat)
				name, a := env.child(op.goArgs...)
				s, rss, err := runChild(name, a...)
				if err != nil {
					return err
				}
				g.seconds, g.rssMB = append(g.seconds, s), append(g.rssMB, rss)
				if opt.Python != "" {
					s, rss, err := runChild(opt.Python, op.pyArgs...)
					if err != nil {
						return err
					}
					p.seconds, p.rssMB = append(p.seconds, s), append(p.rssMB, rss)
				}
			}
			gs, gr := g.median()
			if opt.Python == "" {
				fmt.Fprintf(w, "%-10s %-5s %10.3f %10s %8s %10.0f %10s %8s\n", name, op.op, gs, "-", "-", gr, "-", "-")
				continue
			}
			ps, pr := p.median()
			fmt.Fprintf(w, "%-10s %-5s %10.3f %10.3f %7.1fx %10.0f %10.0f %8.2f\n", name, op.op, gs, ps, ps/gs, gr, pr, gr/pr)
		}
	}
	return nil
}

// Child performs one operation of a measurement in this process and
// prints its result as JSON to stdout: OP ARGS, as the parent gives them
// (save PT KEYFILE OUT, load ENC KEYFILE, train|infer BATCH STEPS,
// fl-server ADDR N DIR).
func Child(args []string, stdout io.Writer) error {
	if len(args) > 0 && args[0] == "fl-server" {
		return flServer(args[1:], stdout)
	}
	if len(args) > 0 && args[0] == "fl28-server" {
		return fl28Server(args[1:], stdout)
	}
	if len(args) < 3 {
		return fmt.Errorf("%w: want bench --child OP ARGS", ErrUsage)
	}
	if args[0] == "train" || args[0] == "infer" {
		return modelChild(args, stdout)
	}
	k, err := persistor.ReadKeyFile(args[2])
	if err != nil {
		return err
	}
	var dt time.Duration
	switch args[0] {
	case "save":
		if len(args) != 4 {
			return ErrUsage
		}
		ck, err := persistor.ReadCheckpointFile(args[1], nil)
		if err != nil {
			return err
		}
		p := &persistor.SecuredPersistor{Path: args[3], Key: k}
		t0 := time.Now()
		if err := p.Save(ck); err != nil {
			return err
		}
		dt = time.Since(t0)
	case "load":
		t0 := time.Now()
		ck, err := persistor.ReadCheckpointFile(args[1], k)
		if err != nil {
			return err
		}
		if ck.Model.Len() == 0 {
			return errors.New("empty model")
		}
		dt = time.Since(t0)
	default:
		return fmt.Errorf("%w: unknown bench op %q", ErrUsage, args[0])
	}
	return json.NewEncoder(stdout).Encode(map[string]float64{"seconds": dt.Seconds()})
}

func fileSize(name string) int64 {
	st, err := os.Stat(name)
	if err != nil {
		return 0
	}
	return st.Size()
}

func humanBytes(n int64) string {
	return fmt.Sprintf("%.1f MB", float64(n)/1e6)
}
