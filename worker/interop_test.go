//go:build interop

package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	peertool "github.com/flarego/flarego/internal/peer"
	"github.com/flarego/flarego/persistor"
	"github.com/flarego/flarego/persistor/pickle"
)

// The federated run's global model opens with Python's cryptography and
// loads into the seed's PneumoniaModel with torch 1.13's
// torch.load(weights_only=True) and torch 2.6's default torch.load.
func TestInteropSimulatedModelLoadsInTorch(t *testing.T) {
	dir := t.TempDir()
	td, _ := filepath.Abs(filepath.Join("..", "testdata"))
	key := filepath.Join(td, "fernet", "key.txt")
	job := writeJob(t, dir, key)
	t.Setenv("FLAREGO_OUTPUT", filepath.Join(dir, "output"))
	os.MkdirAll(filepath.Join(dir, "output"), 0o755)
	var out bytes.Buffer
	must := func(args ...string) {
		if rc := run(args, &out, &out); rc != 0 {
			t.Fatalf("flarego %v: exit %d\n%s", args, rc, out.String())
		}
	}
	must("samples", "--n", "2", filepath.Join(dir, "data", "site-1"))
	must("samples", "--n", "2", "--seed", "2", filepath.Join(dir, "data", "site-2"))
	must("simulate", job, "-n", "2", "--data", filepath.Join(dir, "data"), "--key-file", key, "--set", "wait_time_after_min_received=0", "--set", "num_rounds=2")

	plain := filepath.Join(dir, "global.pt")
	peertool.Run(t, "fernet-decrypt", key, filepath.Join(dir, "output", "model_parameters.pt.enc"), plain)
	x := make([]float32, 3*224*224)
	for i := range x {
		x[i] = float32(i%17) / 17
	}
	var xb bytes.Buffer
	persistor.WritePT(&xb, &pickle.OrderedDict{Items: []pickle.Item{{Key: "x", Value: persistor.FromFloat32(x, 1, 3, 224, 224)}}}, persistor.PTOptions{})
	os.WriteFile(filepath.Join(dir, "x.pt"), xb.Bytes(), 0o600)
	// torch.load and a strict load_state_dict into PneumoniaModel.
	peertool.EachTorch(t, func(t *testing.T, py peertool.Torch) {
		py.Run(t, "model-forward", plain, filepath.Join(dir, "x.pt"), filepath.Join(dir, "fw.pt"), "eval")
	})
}
