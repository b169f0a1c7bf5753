//go:build !(goexperiment.simd && amd64)

package kernels

// Without GOEXPERIMENT=simd on amd64 every entry point is the generic loop.

const hasAVX512, hasAVX2 = false, false

// Axpy adds alpha·x to y.
func Axpy(alpha float32, x, y []float32) { axpyGeneric(alpha, x, y) }

// Dot returns Σ x·y.
func Dot(x, y []float32) float32 { return dotGeneric(x, y) }

// Sum64 returns Σ x.
func Sum64(x []float32) float64 { return sum64Generic(x) }

// SumSqDev64 returns Σ (x-m)².
func SumSqDev64(x []float32, m float32) float64 { return sumSqDev64Generic(x, m) }

// Relu writes ReLU(x) to y, which may be x.
func Relu(y, x []float32) { reluGeneric(y, x) }

// ReluGrad writes dy to dx where y > 0 and 0 elsewhere; dx may be dy.
func ReluGrad(dx, dy, y []float32) { reluGradGeneric(dx, dy, y) }

// BNNormalize writes x̂ = (x-m)·is to xh and x̂·g + b to y (ReLU'd when relu).
func BNNormalize(x, xh, y []float32, m, is, g, b float32, relu bool) {
	bnNormalizeGeneric(x, xh, y, m, is, g, b, relu)
}

// BNApply writes x·a + c to y (ReLU'd when relu); y may be x.
func BNApply(x, y []float32, a, c float32, relu bool) { bnApplyGeneric(x, y, a, c, relu) }

// Dot2Sum64 returns Σ d·x and Σ d.
func Dot2Sum64(d, x []float32) (float64, float64) { return dot2sum64Generic(d, x) }

// BNBackward writes k·(d - mdb - x̂·mdg) to dx, which may be d.
func BNBackward(d, xh, dx []float32, k, mdb, mdg float32) { bnBackwardGeneric(d, xh, dx, k, mdb, mdg) }

// SgemmNN adds a·b to c: a is m×k, b is k×n, c is m×n, all row-major.
func SgemmNN(m, n, k int, a, b, c []float32) { sgemmNNGeneric(m, n, k, a, b, c) }

// SgemmNT adds a·bᵀ to c: a is m×k, b is n×k, c is m×n, all row-major.
func SgemmNT(m, n, k int, a, b, c []float32) { sgemmNTGeneric(m, n, k, a, b, c) }

// Conv is a stride-1 convolution of a padded input: for o < cout, r < rows
// and c < wo, y[o·ys + r·wo + c] = bias[o] + Σₜ w[o][t]·xp[off[t] + r·wp + c]
// (ReLU'd when relu), packed holding w as PackConv lays it out.
func Conv(cout int, packed, bias []float32, off []int, xp []float32, wp int, y []float32, ys, rows, wo int, relu bool) {
	convGeneric(cout, packed, bias, off, xp, wp, y, ys, rows, wo, 0, relu)
}

// vecWidth is the vector width of Dot, Axpy and the matrix products (0:
// the generic loops).
func vecWidth() int { return 0 }

// convWidth is the vector width of Conv (0: the generic loop).
func convWidth() int { return 0 }

// ConvGradW adds the weight gradient of Conv over a band to dw ([cout][taps]):
// dw[o][t] += Σ_{r<rows, c<wo} dy[o·ys + r·wo + c] · xp[off[t] + r·wp + c].
func ConvGradW(cout int, dy []float32, ys, rows, wo int, off []int, xp []float32, wp int, dw []float32) {
	convGradWGeneric(cout, dy, ys, rows, wo, off, xp, wp, dw, 0, 0)
}
