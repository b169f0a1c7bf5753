package model

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// TestDirectConvMatchesIm2col checks the direct convolution (forward,
// forward with a batch norm folded in, weight, bias and input gradients)
// against the im2col path it replaces, on random shapes whose channel
// counts and widths are not multiples of the kernels' blocks.
func TestDirectConvMatchesIm2col(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	normal := func(n int) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(rng.NormFloat64())
		}
		return v
	}
	for trial := range 40 {
		k := []int{1, 3, 3, 5}[rng.IntN(4)]
		pad := rng.IntN(k)
		cin, cout := 1+rng.IntN(7), 1+rng.IntN(11)
		h, w := k+rng.IntN(20), k+rng.IntN(40)
		if trial == 0 {
			cin, cout, h, w, k, pad = 20, 32, 19, 112, 3, 1 // conv3's widths, a partial last band
		}
		n := 1 + rng.IntN(3)
		ho, wo := h+2*pad-k+1, w+2*pad-k+1
		name := fmt.Sprintf("cin=%d cout=%d %dx%d k=%d pad=%d n=%d", cin, cout, h, w, k, pad, n)
		relu := rng.IntN(2) == 0
		mk := func(wv, bv []float32) *conv {
			W := &Param32{W: append([]float32(nil), wv...), G: make([]float32, len(wv))}
			B := &Param32{W: append([]float32(nil), bv...), G: make([]float32, len(bv))}
			return newConv(W, B, []int{cin, h, w}, []int{cout, ho, wo}, k, 1, pad, n, true, &convScratch{}, relu)
		}
		wv, bv := normal(cout*cin*k*k), normal(cout)
		direct, ref := mk(wv, bv), mk(wv, bv)
		if direct.off == nil {
			t.Fatalf("%s: no direct path", name)
		}
		ref.off = nil // the im2col path
		x := normal(n * cin * h * w)
		yd := append([]float32(nil), direct.forward(x, n, true)...)
		yr := append([]float32(nil), ref.forward(x, n, true)...)
		close := func(what string, got, want []float32, terms int) {
			t.Helper()
			for i := range want {
				if d := math.Abs(float64(got[i] - want[i])); d > 1e-5*float64(terms)*(1+math.Abs(float64(want[i]))) {
					t.Fatalf("%s: %s[%d] = %v, im2col %v", name, what, i, got[i], want[i])
				}
			}
		}
		close("y", yd, yr, cin*k*k)
		dy := normal(len(yr))
		dyr := append([]float32(nil), dy...)
		dxd := direct.backward(dy, n)
		dxr := ref.backward(dyr, n)
		close("dW", direct.w.G, ref.w.G, n*ho*wo)
		close("db", direct.b.G, ref.b.G, n*ho*wo)
		close("dx", dxd, dxr, cout*k*k)

		// A batch norm folded into the conv at inference, against the conv
		// and the batch norm applied one after the other.
		bnOf := func() *batchNorm {
			g := &Param32{W: normal(cout), G: make([]float32, cout)}
			b := &Param32{W: normal(cout), G: make([]float32, cout)}
			rm, rv := normal(cout), normal(cout)
			for i := range rv {
				rv[i] = 0.5 + rv[i]*rv[i]
			}
			return newBatchNorm(g, b, rm, rv, []int64{0}, []int{cout, ho, wo}, n, 1e-5, 0.1, true, true)
		}
		state := rng.Uint64()
		rng2 := rand.New(rand.NewPCG(state, 1))
		rng = rng2
		bnD := bnOf()
		rng = rand.New(rand.NewPCG(state, 1))
		bnR := bnOf()
		fd, fr := mk(wv, bv), mk(wv, bv)
		fd.relu, fr.relu = false, false
		fd.bn, bnD.folded = bnD, true
		fr.off = nil
		got := append([]float32(nil), bnD.forward(fd.forward(x, n, false), n, false)...)
		want := bnR.forward(fr.forward(x, n, false), n, false)
		close("folded y", got, want, 2*cin*k*k)
	}
}
