package model

import (
	"math/rand/v2"
	"runtime"
	"testing"
	"time"
	"weak"
)

// The Gorgonia graph runs the same kernels as Net's direct calls: the same
// logits, loss and gradients, bit for bit.
func TestGraphMatchesDirectCalls(t *testing.T) {
	spec := PneumoniaSpec()
	sd, _ := Init(spec, 3)
	const n = 2
	rng := rand.New(rand.NewPCG(1, 2))
	x := make([]float32, n*3*224*224)
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	labels := []int{1, 0}

	direct, _ := NewNet(spec, sd, n)
	logits, _ := direct.Forward(x, n, true)
	want := append([]float32(nil), logits...)
	grad := make([]float32, n*2)
	wantLoss, _ := CrossEntropy(logits, labels, 2, grad)
	direct.ZeroGrad()
	direct.Backward(grad, n)

	viaGraph, _ := NewNet(spec, sd, n)
	gr, err := viaGraph.NewGraph(n, true)
	if err != nil {
		t.Fatal(err)
	}
	defer gr.Close()
	for step := 0; step < 2; step++ { // twice: the machine must reset cleanly
		viaGraph.ZeroGrad()
		got, loss, err := gr.Run(x, labels)
		if err != nil {
			t.Fatal(err)
		}
		if step == 1 {
			break // batch-norm statistics moved on; only the first step compares
		}
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("logit %d: graph %v, direct %v", i, got[i], want[i])
			}
		}
		if loss != wantLoss {
			t.Fatalf("loss: graph %v, direct %v", loss, wantLoss)
		}
		for i, p := range viaGraph.Params() {
			q := direct.Params()[i]
			for j := range p.G {
				if p.G[j] != q.G[j] {
					t.Fatalf("%s grad[%d]: graph %v, direct %v", p.Name, j, p.G[j], q.G[j])
				}
			}
		}
	}
	eval, err := viaGraph.NewGraph(n, false)
	if err != nil {
		t.Fatal(err)
	}
	defer eval.Close()
	got, _, err := eval.Run(x, nil)
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := viaGraph.Forward(x, n, false)
	for i := range got {
		if got[i] != ref[i] {
			t.Fatalf("eval logit %d differs", i)
		}
	}
}

// A graph, and the net it runs, are freed once dropped. Two references
// from Gorgonia kept every graph ever built (120 MB each for this model at
// batch 4, 24 GB in a long test run): its tape machine has a finalizer, so
// a cycle back to it through the ops was never collected, and
// gorgonia.Grad's package-level constant 1 keeps a list of every loss it
// was the gradient of.
func TestGraphsAreFreed(t *testing.T) {
	spec := PneumoniaSpec()
	sd, _ := Init(spec, 3)
	x := make([]float32, 3*224*224)
	for _, train := range []bool{false, true} {
		w := func() weak.Pointer[Net] {
			net, err := NewNet(spec, sd, 1)
			if err != nil {
				t.Fatal(err)
			}
			gr, err := net.NewGraph(1, train)
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err := gr.Run(x, []int{1}); err != nil {
				t.Fatal(err)
			}
			gr.Close()
			return weak.Make(net)
		}()
		// A finalizer runs after the collection that found its object
		// unreachable; what it held goes in a later one.
		for i := 0; i < 50 && w.Value() != nil; i++ {
			runtime.GC()
			time.Sleep(10 * time.Millisecond)
		}
		if w.Value() != nil {
			t.Errorf("train=%v: the net is still reachable after its graph was closed and dropped", train)
		}
	}
}
