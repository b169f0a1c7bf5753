package kernels

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// The tests compare each entry point (AVX-512 where this build and CPU
// have it) with its generic version, on random lengths that cover empty
// inputs, vector tails and block edges, with and without NaN, ±Inf and -0.

func TestPath(t *testing.T) {
	switch {
	case hasAVX512:
		t.Log("comparing the AVX-512 entry points with the generic functions")
	case hasAVX2:
		t.Log("comparing the AVX2 entry points (convolution, products, Dot, Axpy) with the generic functions")
	default:
		t.Log("no AVX-512 path in this build or on this CPU: the entry points are the generic functions")
	}
}

var lengths = []int{0, 1, 2, 3, 4, 5, 7, 15, 16, 17, 31, 32, 33, 47, 63, 64, 65, 100, 255, 1000, 4095, 4096, 4097, 4111, 8192 + 40, 12345}

func testLengths(rng *rand.Rand) []int {
	ns := slices.Clone(lengths)
	for range 20 {
		ns = append(ns, rng.IntN(300))
	}
	return ns
}

var specials = []float32{float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1)), float32(math.Copysign(0, -1)), 0, -1, 1}

// vec returns n normal values; with special, about one in eight is one of
// specials.
func vec(rng *rand.Rand, n int, special bool) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(rng.NormFloat64())
		if special && rng.IntN(8) == 0 {
			v[i] = specials[rng.IntN(len(specials))]
		}
	}
	return v
}

func isNaN(v float32) bool { return v != v }

// same reports whether a and b have the same bits, or are both NaN.
func same(a, b float32) bool {
	return math.Float32bits(a) == math.Float32bits(b) || isNaN(a) && isNaN(b)
}

func sameSlices(t *testing.T, what string, got, want []float32) {
	t.Helper()
	for i := range want {
		if !same(got[i], want[i]) {
			t.Fatalf("%s: element %d of %d is %v (%#08x), generic %v (%#08x)", what, i, len(want),
				got[i], math.Float32bits(got[i]), want[i], math.Float32bits(want[i]))
		}
	}
}

// gamma is γₙ for float32 with some room for the lane sums.
func gamma(n int) float64 {
	const u = 1.0 / (1 << 24)
	nu := float64(n+32) * u
	return nu / (1 - nu)
}

// agree reports whether got and want, two sums of n terms whose absolute
// values add to mag, agree as the package promises.
func agree(got, want, mag float64, n int) bool {
	switch {
	case math.IsNaN(want):
		return math.IsNaN(got)
	case math.IsInf(want, 0):
		return got == want
	case math.IsNaN(got) || math.IsInf(got, 0):
		return false
	}
	return math.Abs(got-want) <= 2*gamma(n)*mag
}

func absDot(x, y []float32) float64 {
	var s float64
	for i := range x {
		s += math.Abs(float64(x[i]) * float64(y[i]))
	}
	return s
}

func TestElementwise(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range testLengths(rng) {
		for _, special := range []bool{false, true} {
			name := fmt.Sprintf("n=%d special=%v", n, special)
			x, y0 := vec(rng, n, special), vec(rng, n, special)
			alpha := float32(rng.NormFloat64())
			m, is, g, b := float32(rng.NormFloat64()), float32(rng.Float64()*3), float32(rng.NormFloat64()), float32(rng.NormFloat64())

			got, want := slices.Clone(y0), slices.Clone(y0)
			Axpy(alpha, x, got)
			axpyGeneric(alpha, x, want)
			sameSlices(t, "Axpy "+name, got, want)

			got, want = make([]float32, n), make([]float32, n)
			Relu(got, x)
			reluGeneric(want, x)
			sameSlices(t, "Relu "+name, got, want)
			inPlace := slices.Clone(x)
			Relu(inPlace, inPlace)
			sameSlices(t, "Relu in place "+name, inPlace, want)

			got, want = make([]float32, n), make([]float32, n)
			ReluGrad(got, y0, x)
			reluGradGeneric(want, y0, x)
			sameSlices(t, "ReluGrad "+name, got, want)
			inPlace = slices.Clone(y0)
			ReluGrad(inPlace, inPlace, x)
			sameSlices(t, "ReluGrad in place "+name, inPlace, want)

			for _, relu := range []bool{false, true} {
				name := fmt.Sprintf("%s relu=%v", name, relu)
				gh, gy, wh, wy := make([]float32, n), make([]float32, n), make([]float32, n), make([]float32, n)
				BNNormalize(x, gh, gy, m, is, g, b, relu)
				bnNormalizeGeneric(x, wh, wy, m, is, g, b, relu)
				sameSlices(t, "BNNormalize x̂ "+name, gh, wh)
				sameSlices(t, "BNNormalize y "+name, gy, wy)
				inPlace = slices.Clone(x)
				BNNormalize(inPlace, gh, inPlace, m, is, g, b, relu)
				sameSlices(t, "BNNormalize in place "+name, inPlace, wy)

				BNApply(x, gy, is*g, b, relu)
				bnApplyGeneric(x, wy, is*g, b, relu)
				sameSlices(t, "BNApply "+name, gy, wy)
				inPlace = slices.Clone(x)
				BNApply(inPlace, inPlace, is*g, b, relu)
				sameSlices(t, "BNApply in place "+name, inPlace, wy)
			}

			got, want = make([]float32, n), make([]float32, n)
			BNBackward(y0, x, got, is, m, g)
			bnBackwardGeneric(y0, x, want, is, m, g)
			sameSlices(t, "BNBackward "+name, got, want)
		}
	}
}

func TestReluSemantics(t *testing.T) {
	nan := float32(math.NaN())
	in := []float32{nan, float32(math.Inf(1)), float32(math.Inf(-1)), float32(math.Copysign(0, -1)), 0, -2, 3, float32(math.SmallestNonzeroFloat32), -float32(math.SmallestNonzeroFloat32)}
	want := []float32{nan, float32(math.Inf(1)), 0, 0, 0, 0, 3, float32(math.SmallestNonzeroFloat32), 0}
	grad := []float32{0, 1, 0, 0, 0, 0, 1, 1, 0}
	// Repeated to 3·9·2 = 54 elements, so that the values land in whole
	// vectors and in the tail.
	var x, w, dw []float32
	for range 6 {
		x, w, dw = append(x, in...), append(w, want...), append(dw, grad...)
	}
	ones := make([]float32, len(x))
	for i := range ones {
		ones[i] = 1
	}
	for _, f := range []struct {
		name       string
		relu       func(y, x []float32)
		reluGrad   func(dx, dy, y []float32)
		bnApplyFor func(x, y []float32, a, c float32, relu bool)
	}{
		{"entry points", Relu, ReluGrad, BNApply},
		{"generic", reluGeneric, reluGradGeneric, bnApplyGeneric},
	} {
		y := make([]float32, len(x))
		f.relu(y, x)
		sameSlices(t, "Relu "+f.name, y, w)
		f.bnApplyFor(x, y, 1, 0, true)
		sameSlices(t, "BNApply(relu) "+f.name, y, w)
		f.reluGrad(y, ones, x)
		sameSlices(t, "ReluGrad "+f.name, y, dw)
	}
	y := make([]float32, len(x))
	Relu(y, x)
	for i := 0; i < len(x); i += len(in) {
		if math.Float32bits(y[i]) != math.Float32bits(nan) {
			t.Errorf("Relu changed a NaN's bits at %d: %#08x, want %#08x", i, math.Float32bits(y[i]), math.Float32bits(nan))
		}
	}
}

func TestReductions(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, n := range testLengths(rng) {
		for _, special := range []bool{false, true} {
			name := fmt.Sprintf("n=%d special=%v", n, special)
			x, y := vec(rng, n, special), vec(rng, n, special)
			m := float32(rng.NormFloat64() * 0.1)
			exactDot, exact16 := vecWidth() == 0 || n < 2*vecWidth(), vecWidth() == 0 || n < vecWidth()

			got, want := Dot(x, y), dotGeneric(x, y)
			if exactDot && !same(got, want) || !agree(float64(got), float64(want), absDot(x, y), n) {
				t.Errorf("Dot %s: %v, generic %v", name, got, want)
			}

			var mag, magSq float64
			dev := make([]float32, n)
			for i, v := range x {
				mag += math.Abs(float64(v))
				dev[i] = v - m
				magSq += float64(dev[i]) * float64(dev[i])
			}
			check := func(what string, got, want, mag float64) {
				t.Helper()
				if exact16 && math.Float64bits(got) != math.Float64bits(want) && !(math.IsNaN(got) && math.IsNaN(want)) ||
					!agree(got, want, mag, n) {
					t.Errorf("%s %s: %v, generic %v", what, name, got, want)
				}
			}
			check("Sum64", Sum64(x), sum64Generic(x), mag)
			check("SumSqDev64", SumSqDev64(x, m), sumSqDev64Generic(x, m), magSq)
			gs, gt := Dot2Sum64(x, y)
			ws, wt := dot2sum64Generic(x, y)
			check("Dot2Sum64 Σd·x", gs, ws, absDot(x, y))
			check("Dot2Sum64 Σd", gt, wt, mag)
		}
	}
}

func TestSgemm(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	type shape struct{ m, n, k int }
	shapes := []shape{{0, 0, 0}, {0, 5, 3}, {3, 0, 2}, {4, 32, 0}, {1, 1, 1}, {4, 32, 1}, {8, 64, 27},
		{5, 33, 17}, {4, 4, 16}, {7, 9, 1100}, {4, 4, 513}, {6, 70, 15}, {3, 100, 9}, {9, 31, 40}}
	for range 40 {
		shapes = append(shapes, shape{rng.IntN(13), rng.IntN(80), rng.IntN(70)})
	}
	for _, s := range shapes {
		for _, special := range []bool{false, true} {
			name := fmt.Sprintf("%d×%d×%d special=%v", s.m, s.n, s.k, special)
			// Specials are rare here: one in a column of a product is enough.
			a := vec(rng, s.m*s.k, false)
			if special && len(a) > 0 {
				for range 3 {
					a[rng.IntN(len(a))] = specials[rng.IntN(3)]
				}
			}
			c0 := vec(rng, s.m*s.n, false)

			b := vec(rng, s.k*s.n, false)
			got, want := slices.Clone(c0), slices.Clone(c0)
			SgemmNN(s.m, s.n, s.k, a, b, got)
			sgemmNNGeneric(s.m, s.n, s.k, a, b, want)
			exact := vecWidth() == 0 || s.m < 4 || s.n < 2*vecWidth()
			for i := 0; i < s.m; i++ {
				for j := 0; j < s.n; j++ {
					mag := math.Abs(float64(c0[i*s.n+j]))
					for p := 0; p < s.k; p++ {
						mag += math.Abs(float64(a[i*s.k+p]) * float64(b[p*s.n+j]))
					}
					g, w := got[i*s.n+j], want[i*s.n+j]
					if exact && !same(g, w) || !agree(float64(g), float64(w), mag, s.k+1) {
						t.Fatalf("SgemmNN %s: c[%d,%d] = %v, generic %v", name, i, j, g, w)
					}
				}
			}

			bt := vec(rng, s.n*s.k, false)
			got, want = slices.Clone(c0), slices.Clone(c0)
			SgemmNT(s.m, s.n, s.k, a, bt, got)
			sgemmNTGeneric(s.m, s.n, s.k, a, bt, want)
			exact = vecWidth() == 0 || s.k < vecWidth()
			for i := 0; i < s.m; i++ {
				for j := 0; j < s.n; j++ {
					mag := math.Abs(float64(c0[i*s.n+j])) + absDot(a[i*s.k:(i+1)*s.k], bt[j*s.k:(j+1)*s.k])
					g, w := got[i*s.n+j], want[i*s.n+j]
					if exact && !same(g, w) || !agree(float64(g), float64(w), mag, s.k+1) {
						t.Fatalf("SgemmNT %s: c[%d,%d] = %v, generic %v", name, i, j, g, w)
					}
				}
			}
		}
	}
}

// The benchmarks use sizes from the pneumonia network (a 56×56 plane, a
// 3×3×64 patch).
func BenchmarkAxpy(b *testing.B) {
	x, y := make([]float32, 3136), make([]float32, 3136)
	b.SetBytes(3 * 4 * 3136)
	for b.Loop() {
		Axpy(0.5, x, y)
	}
}

func BenchmarkDot(b *testing.B) {
	x, y := make([]float32, 3136), make([]float32, 3136)
	b.SetBytes(2 * 4 * 3136)
	for b.Loop() {
		Dot(x, y)
	}
}

func BenchmarkSgemmNN(b *testing.B) {
	const m, n, k = 64, 3136, 576
	x, y, c := make([]float32, m*k), make([]float32, k*n), make([]float32, m*n)
	for b.Loop() {
		SgemmNN(m, n, k, x, y, c)
	}
	b.ReportMetric(2*m*n*k*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
}

func BenchmarkSgemmNT(b *testing.B) {
	const m, n, k = 64, 576, 3136
	x, y, c := make([]float32, m*k), make([]float32, n*k), make([]float32, m*n)
	for b.Loop() {
		SgemmNT(m, n, k, x, y, c)
	}
	b.ReportMetric(2*m*n*k*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
}
