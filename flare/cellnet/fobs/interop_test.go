//go:build interop

package fobs

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/cellnet/lobs"
	"github.com/flarego/flarego/internal/peer"
	"github.com/flarego/flarego/persistor"
	"github.com/flarego/flarego/persistor/pickle"
)

func fobsPeer(t *testing.T, args ...string) string {
	t.Helper()
	script := filepath.Join(filepath.Dir(peer.Script(t)), "fobs_peer.py")
	cmd := exec.Command(peer.Python(), append([]string{script, peer.NVFlare(t)}, args...)...)
	cmd.Env = append(os.Environ(), "PYTHONPATH=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("fobs_peer.py %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// What NVFlare 2.8.1's fobs.dumps writes, we decode; what we write, its
// fobs.loads reads back to the same Shareable.
func TestInteropNVFlareFOBS(t *testing.T) {
	dir := t.TempDir()
	theirs := filepath.Join(dir, "theirs.fobs")
	fobsPeer(t, "dumps", theirs)
	b, err := os.ReadFile(theirs)
	if err != nil {
		t.Fatal(err)
	}
	c, err := lobs.Decode(b, lobs.V27)
	if err != nil {
		t.Fatal(err)
	}
	v, err := Decode(c, Options{})
	if err != nil {
		t.Fatal(err)
	}
	s, ok := v.(*flare.Shareable)
	if !ok {
		t.Fatalf("decoded a %T", v)
	}
	if s.HeaderString(flare.HeaderTaskName) != "train" || s.DXO == nil || s.DXO.Kind != flare.KindWeights {
		t.Fatalf("shareable %+v", s)
	}
	w := s.DXO.Get("w")
	if w == nil || w.DType != persistor.Float32 || !reflect.DeepEqual(w.Shape, []int{3, 3}) {
		t.Fatalf("w %v", w)
	}
	if vals, _ := w.Float32s(); vals[8] != 8 {
		t.Fatalf("w values %v", vals)
	}
	if n := s.DXO.Get("n"); n == nil || n.DType != persistor.Int64 {
		t.Fatalf("n %v", n)
	}
	if p, _ := s.Header("pair"); !reflect.DeepEqual(p, pickle.Tuple{int64(1), "a"}) {
		t.Fatalf("pair %#v", p)
	}
	if when, _ := s.Header("when"); !when.(time.Time).Equal(time.Date(2026, 12, 1, 18, 3, 57, 96082000, time.UTC)) {
		t.Fatalf("when %v", when)
	}
	if steps, err := s.DXO.NumSteps(); err != nil || steps != 2 {
		t.Fatalf("steps %d %v", steps, err)
	}

	// And back: ours, read by NVFlare.
	ours, err := Encode(s)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "ours.fobs")
	if err := os.WriteFile(p, ours, 0o600); err != nil {
		t.Fatal(err)
	}
	var got struct {
		Type     string            `json:"type"`
		TaskName string            `json:"task_name"`
		Kind     string            `json:"kind"`
		Meta     map[string]any    `json:"meta"`
		Arrays   map[string][]any  `json:"arrays"`
		Keys     []string          `json:"header_keys"`
		Headers  map[string]string `json:"headers"`
	}
	if err := json.Unmarshal([]byte(fobsPeer(t, "loads", p)), &got); err != nil {
		t.Fatal(err)
	}
	if got.Type != "Shareable" || got.TaskName != "train" || got.Kind != "DataKind.WEIGHTS" || got.Meta["NUM_STEPS_CURRENT_ROUND"] != 2.0 {
		t.Fatalf("NVFlare read %+v", got)
	}
	if !reflect.DeepEqual(got.Arrays["w"], []any{"float32", []any{3.0, 3.0}, 36.0}) || !reflect.DeepEqual(got.Arrays["n"], []any{"int64", []any{2.0}, 6.0}) {
		t.Fatalf("NVFlare read arrays %v", got.Arrays)
	}
	t.Logf("NVFlare read back %+v", got)
}
