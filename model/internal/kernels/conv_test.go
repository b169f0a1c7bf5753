package kernels

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// convCase is a padded input band and the tap offsets of a k×k kernel.
type convCase struct {
	cout, cin, k, rows, wo int
	wp, hp                 int
	off                    []int
}

func newConvCase(cout, cin, k, rows, wo, extra int) convCase {
	c := convCase{cout: cout, cin: cin, k: k, rows: rows, wo: wo, wp: wo + k - 1 + extra, hp: rows + k - 1}
	for ci := 0; ci < cin; ci++ {
		for ky := 0; ky < k; ky++ {
			for kx := 0; kx < k; kx++ {
				c.off = append(c.off, (ci*c.hp+ky)*c.wp+kx)
			}
		}
	}
	return c
}

// TestConv compares Conv with the plain definition (each output its bias
// plus its taps in order, each product rounded): bit for bit where the
// generic loop runs, within the package's tolerance where AVX-512 does, on
// random shapes with channel counts and widths that are not multiples of
// the vector blocks.
func TestConv(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	cases := []convCase{newConvCase(12, 3, 3, 4, 224, 0), newConvCase(20, 12, 3, 3, 112, 0),
		newConvCase(32, 20, 3, 2, 112, 0), newConvCase(1, 1, 1, 1, 1, 0), newConvCase(5, 2, 3, 3, 17, 2),
		newConvCase(3, 4, 5, 2, 79, 0), newConvCase(7, 3, 3, 1, 15, 0), newConvCase(4, 1, 1, 2, 16, 0)}
	for range 30 {
		cases = append(cases, newConvCase(1+rng.IntN(13), 1+rng.IntN(5), 1+rng.IntN(3), 1+rng.IntN(4), 1+rng.IntN(150), rng.IntN(3)))
	}
	for _, c := range cases {
		for _, relu := range []bool{false, true} {
			name := fmt.Sprintf("cout=%d cin=%d k=%d rows=%d wo=%d wp=%d relu=%v", c.cout, c.cin, c.k, c.rows, c.wo, c.wp, relu)
			taps := c.cin * c.k * c.k
			w := vec(rng, c.cout*taps, false)
			bias := vec(rng, c.cout, false)
			xp := vec(rng, c.cin*c.hp*c.wp, false)
			packed := PackConv(w, c.cout, taps, nil)
			ys := c.rows*c.wo + 3 // planes further apart than a band
			got := vec(rng, c.cout*ys, false)
			keep := append([]float32(nil), got...)
			Conv(c.cout, packed, bias, c.off, xp, c.wp, got, ys, c.rows, c.wo, relu)
			for o := 0; o < c.cout; o++ {
				for i := c.rows * c.wo; i < ys; i++ {
					if !same(got[o*ys+i], keep[o*ys+i]) {
						t.Fatalf("%s: wrote past the band of channel %d", name, o)
					}
				}
				for r := 0; r < c.rows; r++ {
					for col := 0; col < c.wo; col++ {
						want, mag := bias[o], math.Abs(float64(bias[o]))
						for ti, d := range c.off {
							p := w[o*taps+ti] * xp[d+r*c.wp+col]
							want += float32(p)
							mag += math.Abs(float64(p))
						}
						if relu && !(want > 0) {
							want, mag = 0, mag+0
						}
						g := got[o*ys+r*c.wo+col]
						vw := convWidth()
						exact := vw == 0 || c.wo < vw || col >= c.wo/vw*vw
						if exact && !same(g, want) || !agree(float64(g), float64(want), mag, taps+1) {
							t.Fatalf("%s: y[%d,%d,%d] = %v, want %v", name, o, r, col, g, want)
						}
					}
				}
			}
		}
	}
}

// BenchmarkConv is conv3 of the pneumonia network on one 16-row band.
func BenchmarkConv(b *testing.B) {
	c := newConvCase(32, 20, 3, 16, 112, 0)
	taps := c.cin * 9
	rng := rand.New(rand.NewPCG(1, 1))
	packed := PackConv(vec(rng, c.cout*taps, false), c.cout, taps, nil)
	bias, xp := make([]float32, c.cout), vec(rng, c.cin*c.hp*c.wp, false)
	y := make([]float32, c.cout*c.rows*c.wo)
	for b.Loop() {
		Conv(c.cout, packed, bias, c.off, xp, c.wp, y, c.rows*c.wo, c.rows, c.wo, true)
	}
	b.ReportMetric(2*float64(c.cout*taps*c.rows*c.wo)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
}

// TestConvGradW compares ConvGradW with its definition (sums from zero in
// row and column order, each product rounded) on the shapes of TestConv.
func TestConvGradW(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	cases := []convCase{newConvCase(12, 3, 3, 8, 224, 0), newConvCase(20, 12, 3, 3, 112, 0),
		newConvCase(32, 20, 3, 2, 112, 0), newConvCase(1, 1, 1, 1, 1, 0), newConvCase(5, 2, 3, 3, 17, 2),
		newConvCase(6, 4, 5, 2, 79, 0), newConvCase(7, 3, 3, 1, 15, 0), newConvCase(4, 1, 1, 2, 16, 0)}
	for range 30 {
		cases = append(cases, newConvCase(1+rng.IntN(13), 1+rng.IntN(5), 1+rng.IntN(3), 1+rng.IntN(4), 1+rng.IntN(150), rng.IntN(3)))
	}
	for _, c := range cases {
		name := fmt.Sprintf("cout=%d cin=%d k=%d rows=%d wo=%d wp=%d", c.cout, c.cin, c.k, c.rows, c.wo, c.wp)
		taps := c.cin * c.k * c.k
		ys := c.rows*c.wo + 5
		dy := vec(rng, c.cout*ys, false)
		xp := vec(rng, c.cin*c.hp*c.wp, false)
		dw0 := vec(rng, c.cout*taps, false)
		got := append([]float32(nil), dw0...)
		ConvGradW(c.cout, dy, ys, c.rows, c.wo, c.off, xp, c.wp, got)
		vw := convWidth()
		for o := 0; o < c.cout; o++ {
			exact := vw == 0 || c.wo < vw || o >= c.cout/4*4 // wholly the generic loop
			for ti, d := range c.off {
				var s float32
				mag := math.Abs(float64(dw0[o*taps+ti]))
				for r := 0; r < c.rows; r++ {
					for col := 0; col < c.wo; col++ {
						p := dy[o*ys+r*c.wo+col] * xp[d+r*c.wp+col]
						s += float32(p)
						mag += math.Abs(float64(p))
					}
				}
				want := dw0[o*taps+ti] + s
				g := got[o*taps+ti]
				if exact && !same(g, want) || !agree(float64(g), float64(want), mag, c.rows*c.wo+1) {
					t.Fatalf("%s: dw[%d,%d] = %v, want %v", name, o, ti, g, want)
				}
			}
		}
	}
}

// BenchmarkConvGradW is conv3's weight gradient on one 8-row band.
func BenchmarkConvGradW(b *testing.B) {
	c := newConvCase(32, 20, 3, 8, 112, 0)
	taps := c.cin * 9
	rng := rand.New(rand.NewPCG(1, 1))
	dy, xp := vec(rng, c.cout*c.rows*c.wo, false), vec(rng, c.cin*c.hp*c.wp, false)
	dw := make([]float32, c.cout*taps)
	for b.Loop() {
		ConvGradW(c.cout, dy, c.rows*c.wo, c.rows, c.wo, c.off, xp, c.wp, dw)
	}
	b.ReportMetric(2*float64(c.cout*taps*c.rows*c.wo)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
}
