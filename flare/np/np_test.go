package np

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/persistor"
	"github.com/flarego/flarego/persistor/pickle"
)

func task(a *persistor.Tensor) *flare.Shareable {
	sh := flare.NewShareable()
	sh.DXO = &flare.DXO{Kind: flare.KindWeights, Data: []flare.NamedArray{{Name: Key, Array: a}}, Meta: &pickle.Dict{}}
	return sh
}

func TestTrainAddsDelta(t *testing.T) {
	ex, err := New(json.RawMessage(`{"delta": 2}`))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	r, err := ex.Execute(ctx, "train", task(persistor.FromFloat32([]float32{1, 2, 3}, 3)), nil)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := r.DXO.Get(Key).Float32s()
	if got[0] != 3 || got[2] != 5 || r.DXO.Kind != flare.KindWeights {
		t.Fatalf("trained %v", got)
	}
	if n, err := r.DXO.NumSteps(); err != nil || n != 1 {
		t.Fatalf("NUM_STEPS_CURRENT_ROUND %d %v", n, err)
	}
	// An integer array stays integer, as numpy's += keeps its dtype.
	r, _ = ex.Execute(ctx, "train", task(persistor.FromInt64([]int64{7}, 1)), nil)
	if a := r.DXO.Get(Key); a.DType != persistor.Int64 || a.Float64At(0) != 9 {
		t.Fatalf("int64: %v", a)
	}
	// submit_model returns the last model trained.
	r, _ = ex.Execute(ctx, "submit_model", flare.NewShareable(), nil)
	if a := r.DXO.Get(Key); a == nil || a.Float64At(0) != 9 {
		t.Fatalf("submit_model: %+v", r.DXO)
	}
	// No DXO, no numpy_key, an unknown task: return codes, no error.
	for name, in := range map[string]*flare.Shareable{"no DXO": flare.NewShareable(), "no numpy_key": {Headers: &pickle.Dict{}, DXO: &flare.DXO{Kind: flare.KindWeights}}} {
		r, err := ex.Execute(ctx, "train", in, nil)
		if err != nil || r.ReturnCode() != flare.RCBadTaskData {
			t.Errorf("%s: %v %v", name, r.ReturnCode(), err)
		}
	}
	if r, _ := ex.Execute(ctx, "validate", task(persistor.FromFloat32([]float32{1}, 1)), nil); r.ReturnCode() != flare.RCTaskUnknown {
		t.Errorf("validate: %v", r.ReturnCode())
	}
	if _, err := New(json.RawMessage(`{"delta": "x"}`)); err == nil {
		t.Error("a string delta was taken")
	}
}

func TestPersistor(t *testing.T) {
	dir := t.TempDir()
	p, err := NewPersistor(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := p.Load()
	if err != nil {
		t.Fatal(err)
	}
	if a := c.Model.Get(Key); a.DType != persistor.Float32 || a.Shape[0] != 3 || a.Float64At(8) != 9 {
		t.Fatalf("initial model %v", a)
	}
	c.Model.Set(Key, persistor.FromFloat32([]float32{4, 5}, 1, 2))
	if err := p.Save(c); err != nil {
		t.Fatal(err)
	}
	c, err = p.Load()
	if err != nil || c.Model.Get(Key).Float64At(1) != 5 {
		t.Fatalf("reloaded %v %v", c, err)
	}
	if p2, err := NewPersistor(dir, json.RawMessage(`{"model": [[1, 2], [3, 4]], "model_name": "m.npy"}`)); err != nil {
		t.Fatal(err)
	} else if c, _ := p2.Load(); c.Model.Get(Key).Shape[1] != 2 {
		t.Fatalf("model arg: %v", c.Model.Get(Key))
	}
	for _, bad := range []string{`{"model_dir": "../x"}`, `{"model": [[1], [2, 3]]}`, `{"model_name": ""}`} {
		if _, err := NewPersistor(dir, json.RawMessage(bad)); err == nil {
			t.Errorf("%s taken", bad)
		}
	}
}
