package model

import (
	"math/rand/v2"
	"strings"
	"testing"
)

func TestPneumoniaSpecParams(t *testing.T) {
	ps, err := PneumoniaSpec().Params()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range ps {
		names = append(names, p.Name)
	}
	want := "conv1.weight conv1.bias bn1.weight bn1.bias bn1.running_mean bn1.running_var bn1.num_batches_tracked " +
		"conv2.weight conv2.bias conv3.weight conv3.bias bn3.weight bn3.bias bn3.running_mean bn3.running_var " +
		"bn3.num_batches_tracked fc.weight fc.bias"
	if strings.Join(names, " ") != want {
		t.Fatalf("keys %v", names)
	}
	if fc := ps[len(ps)-2]; fc.Shape[1] != 32*112*112 {
		t.Fatalf("fc.weight %v", fc.Shape)
	}
}

func TestSpecRoundTripAndErrors(t *testing.T) {
	b, _ := PneumoniaSpec().Marshal()
	s, err := ParseSpec(b)
	if err != nil || len(s.Layers) != 11 {
		t.Fatalf("round trip: %v", err)
	}
	for _, c := range []struct{ json, want string }{
		{`{"input":[3,8,8],"layers":[{"op":"conv3d","name":"c"}]}`, "unknown op"},
		{`{"input":[3,8,8],"layers":[{"op":"conv2d","out":4,"kernel":3}]}`, "needs a name"},
		{`{"input":[3,8,8],"layers":[{"op":"conv2d","name":"c","out":4,"kernel":9}]}`, "kernel 9 larger"},
		{`{"input":[3,8,8],"layers":[{"op":"linear","name":"fc","out":2}]}`, "flatten first"},
		{`{"input":[3,8,8],"layers":[{"op":"flatten"},{"op":"linear","name":"a","out":2},{"op":"linear","name":"a","out":2}]}`, "name used twice"},
		{`{"input":[3,8,8],"classes":3,"layers":[{"op":"flatten"},{"op":"linear","name":"fc","out":2}]}`, "classes is 3"},
		{`{"input":[3,8],"layers":[]}`, "input must be"},
		{`{"input":[3,8,8],"layers":[{"op":"relu","bogus":1}]}`, "unknown field"},
		{`not json`, "model spec"},
	} {
		_, err := ParseSpec([]byte(c.json))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err %v, want %q", c.json, err, c.want)
		}
	}
}

func TestInitIsPyTorchLike(t *testing.T) {
	sd, err := Init(PneumoniaSpec(), 1)
	if err != nil {
		t.Fatal(err)
	}
	w, _ := sd.Get("conv1.weight").Float32s()
	bound := float32(1 / 5.196152422706632) // 1/√27
	for _, v := range w {
		if v < -bound || v > bound {
			t.Fatalf("conv1.weight value %v outside ±%v", v, bound)
		}
	}
	if g, _ := sd.Get("bn1.weight").Float32s(); g[0] != 1 {
		t.Error("bn weight not 1")
	}
	if v, _ := sd.Get("bn3.running_var").Float32s(); v[5] != 1 {
		t.Error("running_var not 1")
	}
	sd2, _ := Init(PneumoniaSpec(), 1)
	w2, _ := sd2.Get("fc.weight").Float32s()
	w1, _ := sd.Get("fc.weight").Float32s()
	if w1[1000] != w2[1000] {
		t.Error("same seed, different weights")
	}
}

// A small net learns to tell two synthetic classes apart.
func TestTrainingSeparatesClasses(t *testing.T) {
	spec := &Spec{Name: "tiny", Input: []int{3, 16, 16}, Classes: 2, Layers: []Layer{
		{Op: "conv2d", Name: "conv1", Out: 4, Kernel: 3, Padding: 1},
		{Op: "batchnorm2d", Name: "bn1"},
		{Op: "relu"},
		{Op: "maxpool2d", Kernel: 2},
		{Op: "dropout", P: 0.1},
		{Op: "flatten"},
		{Op: "linear", Name: "fc", Out: 2},
	}}
	sd, err := Init(spec, 7)
	if err != nil {
		t.Fatal(err)
	}
	const batch = 8
	net, err := NewNet(spec, sd, batch)
	if err != nil {
		t.Fatal(err)
	}
	opt := NewAdam(net.Params(), 0.01)
	rng := rand.New(rand.NewPCG(1, 1))
	makeBatch := func() ([]float32, []int) {
		x := make([]float32, batch*3*16*16)
		y := make([]int, batch)
		for i := range y {
			y[i] = rng.IntN(2)
			for j := 0; j < 3*16*16; j++ {
				v := float32(rng.NormFloat64())
				if y[i] == 1 && (j%16) < 8 { // class 1: brighter left half
					v += 1
				}
				x[i*3*16*16+j] = v
			}
		}
		return x, y
	}
	grad := make([]float32, batch*2)
	var first, last float64
	for step := 0; step < 60; step++ {
		x, y := makeBatch()
		logits, _ := net.Forward(x, batch, true)
		loss, _ := CrossEntropy(logits, y, 2, grad)
		net.ZeroGrad()
		net.Backward(grad, batch)
		opt.Step(net.Params())
		if step == 0 {
			first = loss
		}
		last = loss
	}
	correct := 0
	for k := 0; k < 4; k++ {
		x, y := makeBatch()
		logits, _ := net.Forward(x, batch, false)
		for i := range y {
			pred := 0
			if logits[i*2+1] > logits[i*2] {
				pred = 1
			}
			if pred == y[i] {
				correct++
			}
		}
	}
	if last > first/2 || correct < 30 {
		t.Fatalf("loss %.3f -> %.3f, %d/32 correct", first, last, correct)
	}
	if nbt := net.StateDict().Get("bn1.num_batches_tracked").Float64At(0); nbt != 60 {
		t.Errorf("num_batches_tracked = %v", nbt)
	}
}

func TestNewNetChecksStateDict(t *testing.T) {
	sd, _ := Init(PneumoniaSpec(), 1)
	small := &Spec{Name: "x", Input: []int{3, 224, 224}, Layers: []Layer{{Op: "conv2d", Name: "conv1", Out: 13, Kernel: 3, Padding: 1}, {Op: "flatten"}, {Op: "linear", Name: "fc", Out: 2}}}
	if _, err := NewNet(small, sd, 1); err == nil || !strings.Contains(err.Error(), "conv1.weight has shape") {
		t.Fatalf("err %v", err)
	}
	net, _ := NewNet(PneumoniaSpec(), sd, 2)
	if _, err := net.Forward(make([]float32, 10), 1, false); err == nil {
		t.Fatal("short input accepted")
	}
	if _, err := net.Forward(make([]float32, 3*3*224*224), 3, false); err == nil {
		t.Fatal("batch larger than the net accepted")
	}
}
