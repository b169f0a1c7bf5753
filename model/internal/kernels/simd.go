//go:build goexperiment.simd && amd64

package kernels

import "simd/archsimd"

// With GOEXPERIMENT=simd on amd64 the entry points run AVX-512 on whole
// vectors of 16 and hand what is left to the generic loops; on a CPU
// without AVX-512 they are the generic loops.

var hasAVX512 = archsimd.X86.AVX512()

// Axpy adds alpha·x to y.
func Axpy(alpha float32, x, y []float32) {
	y = y[:len(x)]
	i := 0
	if hasAVX2 && !hasAVX512 {
		i = axpyAVX2(alpha, x, y)
	}
	if hasAVX512 {
		va := archsimd.BroadcastFloat32x16(alpha)
		for ; i+16 <= len(x); i += 16 {
			vy := archsimd.LoadFloat32x16((*[16]float32)(y[i : i+16]))
			vx := archsimd.LoadFloat32x16((*[16]float32)(x[i : i+16]))
			va.Mul(vx).Add(vy).Store((*[16]float32)(y[i : i+16]))
		}
	}
	axpyGeneric(alpha, x[i:], y[i:])
}

// Dot returns Σ x·y: with AVX-512, fused multiply-adds in two vectors of
// sixteen lanes over blocks of 32, the lanes then added in order, then the
// generic sum of the rest.
func Dot(x, y []float32) float32 {
	if hasAVX2 && !hasAVX512 && len(x) >= 16 {
		return dotAVX2(x, y)
	}
	if !hasAVX512 || len(x) < 32 {
		return dotGeneric(x, y)
	}
	y = y[:len(x)]
	var a0, a1 archsimd.Float32x16
	i := 0
	for ; i+32 <= len(x); i += 32 {
		a0 = archsimd.LoadFloat32x16((*[16]float32)(x[i:i+16])).MulAdd(archsimd.LoadFloat32x16((*[16]float32)(y[i:i+16])), a0)
		a1 = archsimd.LoadFloat32x16((*[16]float32)(x[i+16:i+32])).MulAdd(archsimd.LoadFloat32x16((*[16]float32)(y[i+16:i+32])), a1)
	}
	s := hsum(a0.Add(a1))
	if i < len(x) {
		s += dotGeneric(x[i:], y[i:])
	}
	return s
}

// hsum adds the lanes of v in order.
func hsum(v archsimd.Float32x16) float32 {
	var t [16]float32
	v.Store(&t)
	var s float32
	for _, x := range t {
		s += x
	}
	return s
}

// Sum64 returns Σ x: with AVX-512, float32 sums in sixteen lanes per block
// of 4096, added in float64 (which keeps batch-norm statistics accurate),
// then the generic sum of the rest.
func Sum64(x []float32) float64 {
	if hasAVX2 && !hasAVX512 {
		s, i := sum64AVX2(x)
		return s + sum64Generic(x[i:])
	}
	if !hasAVX512 || len(x) < 16 {
		return sum64Generic(x)
	}
	var total float64
	for len(x) >= 16 {
		blk := x[:min(len(x), 4096)/16*16]
		x = x[len(blk):]
		var acc archsimd.Float32x16
		for i := 0; i < len(blk); i += 16 {
			acc = acc.Add(archsimd.LoadFloat32x16((*[16]float32)(blk[i : i+16])))
		}
		total += float64(hsum(acc))
	}
	if len(x) > 0 {
		total += sum64Generic(x)
	}
	return total
}

// SumSqDev64 returns Σ (x-m)², blocked like Sum64.
func SumSqDev64(x []float32, m float32) float64 {
	if hasAVX2 && !hasAVX512 {
		s, i := sumSqDev64AVX2(x, m)
		return s + sumSqDev64Generic(x[i:], m)
	}
	if !hasAVX512 || len(x) < 16 {
		return sumSqDev64Generic(x, m)
	}
	vm := archsimd.BroadcastFloat32x16(m)
	var total float64
	for len(x) >= 16 {
		blk := x[:min(len(x), 4096)/16*16]
		x = x[len(blk):]
		var acc archsimd.Float32x16
		for i := 0; i < len(blk); i += 16 {
			d := archsimd.LoadFloat32x16((*[16]float32)(blk[i : i+16])).Sub(vm)
			acc = d.MulAdd(d, acc)
		}
		total += float64(hsum(acc))
	}
	if len(x) > 0 {
		total += sumSqDev64Generic(x, m)
	}
	return total
}

// relu16 is ReLU on a vector: 0 where v <= 0, v elsewhere (NaN included).
func relu16(v, zero archsimd.Float32x16) archsimd.Float32x16 {
	return zero.Merge(v, v.LessEqual(zero))
}

// Relu writes ReLU(x) to y, which may be x.
func Relu(y, x []float32) {
	y = y[:len(x)]
	i := 0
	if hasAVX2 && !hasAVX512 {
		i = reluAVX2(y, x)
	}
	if hasAVX512 {
		var zero archsimd.Float32x16
		for ; i+16 <= len(x); i += 16 {
			relu16(archsimd.LoadFloat32x16((*[16]float32)(x[i:i+16])), zero).Store((*[16]float32)(y[i : i+16]))
		}
	}
	reluGeneric(y[i:], x[i:])
}

// ReluGrad writes dy to dx where y > 0 and 0 elsewhere; dx may be dy.
func ReluGrad(dx, dy, y []float32) {
	dx, y = dx[:len(dy)], y[:len(dy)]
	i := 0
	if hasAVX2 && !hasAVX512 {
		i = reluGradAVX2(dx, dy, y)
	}
	if hasAVX512 {
		var zero archsimd.Float32x16
		for ; i+16 <= len(dy); i += 16 {
			m := archsimd.LoadFloat32x16((*[16]float32)(y[i : i+16])).Greater(zero)
			archsimd.LoadFloat32x16((*[16]float32)(dy[i : i+16])).Masked(m).Store((*[16]float32)(dx[i : i+16]))
		}
	}
	reluGradGeneric(dx[i:], dy[i:], y[i:])
}

// BNNormalize writes x̂ = (x-m)·is to xh and x̂·g + b to y (ReLU'd when
// relu); y may be x.
func BNNormalize(x, xh, y []float32, m, is, g, b float32, relu bool) {
	xh, y = xh[:len(x)], y[:len(x)]
	i := 0
	if hasAVX2 && !hasAVX512 {
		i = bnNormalizeAVX2(x, xh, y, m, is, g, b, relu)
	}
	if hasAVX512 {
		vm, vis, vg, vb := archsimd.BroadcastFloat32x16(m), archsimd.BroadcastFloat32x16(is), archsimd.BroadcastFloat32x16(g), archsimd.BroadcastFloat32x16(b)
		var zero archsimd.Float32x16
		for ; i+16 <= len(x); i += 16 {
			h := archsimd.LoadFloat32x16((*[16]float32)(x[i : i+16])).Sub(vm).Mul(vis)
			h.Store((*[16]float32)(xh[i : i+16]))
			o := h.Mul(vg).Add(vb)
			if relu {
				o = relu16(o, zero)
			}
			o.Store((*[16]float32)(y[i : i+16]))
		}
	}
	bnNormalizeGeneric(x[i:], xh[i:], y[i:], m, is, g, b, relu)
}

// BNApply writes x·a + c to y (ReLU'd when relu); y may be x.
func BNApply(x, y []float32, a, c float32, relu bool) {
	y = y[:len(x)]
	i := 0
	if hasAVX2 && !hasAVX512 {
		i = bnApplyAVX2(x, y, a, c, relu)
	}
	if hasAVX512 {
		va, vc := archsimd.BroadcastFloat32x16(a), archsimd.BroadcastFloat32x16(c)
		var zero archsimd.Float32x16
		for ; i+16 <= len(x); i += 16 {
			o := archsimd.LoadFloat32x16((*[16]float32)(x[i : i+16])).Mul(va).Add(vc)
			if relu {
				o = relu16(o, zero)
			}
			o.Store((*[16]float32)(y[i : i+16]))
		}
	}
	bnApplyGeneric(x[i:], y[i:], a, c, relu)
}

// Dot2Sum64 returns Σ d·x and Σ d, blocked like Sum64.
func Dot2Sum64(d, x []float32) (float64, float64) {
	if hasAVX2 && !hasAVX512 {
		x = x[:len(d)]
		s, t, i := dot2sum64AVX2(d, x)
		ps, pt := dot2sum64Generic(d[i:], x[i:])
		return s + ps, t + pt
	}
	if !hasAVX512 || len(d) < 16 {
		return dot2sum64Generic(d, x)
	}
	x = x[:len(d)]
	var s, t float64
	for len(d) >= 16 {
		n := min(len(d), 4096) / 16 * 16
		bd, bx := d[:n], x[:n]
		d, x = d[n:], x[n:]
		var as, at archsimd.Float32x16
		for i := 0; i < n; i += 16 {
			v := archsimd.LoadFloat32x16((*[16]float32)(bd[i : i+16]))
			as = v.MulAdd(archsimd.LoadFloat32x16((*[16]float32)(bx[i:i+16])), as)
			at = at.Add(v)
		}
		s += float64(hsum(as))
		t += float64(hsum(at))
	}
	if len(d) > 0 {
		ps, pt := dot2sum64Generic(d, x)
		s += ps
		t += pt
	}
	return s, t
}

// BNBackward writes k·(d - mdb - x̂·mdg) to dx, which may be d.
func BNBackward(d, xh, dx []float32, k, mdb, mdg float32) {
	xh, dx = xh[:len(d)], dx[:len(d)]
	i := 0
	if hasAVX2 && !hasAVX512 {
		i = bnBackwardAVX2(d, xh, dx, k, mdb, mdg)
	}
	if hasAVX512 {
		vk, vdb, vdg := archsimd.BroadcastFloat32x16(k), archsimd.BroadcastFloat32x16(mdb), archsimd.BroadcastFloat32x16(mdg)
		for ; i+16 <= len(d); i += 16 {
			v := archsimd.LoadFloat32x16((*[16]float32)(d[i : i+16])).Sub(vdb)
			h := archsimd.LoadFloat32x16((*[16]float32)(xh[i : i+16]))
			v.Sub(h.Mul(vdg)).Mul(vk).Store((*[16]float32)(dx[i : i+16]))
		}
	}
	bnBackwardGeneric(d[i:], xh[i:], dx[i:], k, mdb, mdg)
}

// SgemmNN adds a·b to c: a is m×k, b is k×n, c is m×n, all row-major.
// With AVX-512 a micro-kernel keeps a 4×32 block of c in eight registers
// while it streams k rows of b, broadcasting one element of a per row and
// using fused multiply-adds; the rows and columns that do not fill a block
// are Axpy's.
func SgemmNN(m, n, k int, a, b, c []float32) {
	if hasAVX2 && !hasAVX512 {
		sgemmNNAVX2(m, n, k, a, b, c)
		return
	}
	if !hasAVX512 {
		sgemmNNGeneric(m, n, k, a, b, c)
		return
	}
	// Columns outer, rows inner: the k×32 panel of b stays in L1 while
	// every row block of a passes over it.
	m4 := m / 4 * 4
	j := 0
	for ; j+32 <= n; j += 32 {
		for i := 0; i < m4; i += 4 {
			kernelNN4x32(k, n, a[i*k:], b[j:], c[i*n+j:])
		}
	}
	for i := 0; i < m4; i++ {
		if j < n {
			nnRowTail(k, n, j, a[i*k:(i+1)*k], b, c[i*n:(i+1)*n])
		}
	}
	for i := m4; i < m; i++ {
		nnRowTail(k, n, 0, a[i*k:(i+1)*k], b, c[i*n:(i+1)*n])
	}
}

func kernelNN4x32(k, n int, a, b, c []float32) {
	c0, c1, c2, c3 := c, c[n:], c[2*n:], c[3*n:]
	acc00 := archsimd.LoadFloat32x16((*[16]float32)(c0[0:16]))
	acc01 := archsimd.LoadFloat32x16((*[16]float32)(c0[16:32]))
	acc10 := archsimd.LoadFloat32x16((*[16]float32)(c1[0:16]))
	acc11 := archsimd.LoadFloat32x16((*[16]float32)(c1[16:32]))
	acc20 := archsimd.LoadFloat32x16((*[16]float32)(c2[0:16]))
	acc21 := archsimd.LoadFloat32x16((*[16]float32)(c2[16:32]))
	acc30 := archsimd.LoadFloat32x16((*[16]float32)(c3[0:16]))
	acc31 := archsimd.LoadFloat32x16((*[16]float32)(c3[16:32]))
	a0, a1, a2, a3 := a[:k], a[k:2*k], a[2*k:3*k], a[3*k:4*k]
	for p := 0; p < k; p++ {
		row := b[p*n : p*n+32]
		b0 := archsimd.LoadFloat32x16((*[16]float32)(row[0:16]))
		b1 := archsimd.LoadFloat32x16((*[16]float32)(row[16:32]))
		v := archsimd.BroadcastFloat32x16(a0[p])
		acc00 = v.MulAdd(b0, acc00)
		acc01 = v.MulAdd(b1, acc01)
		v = archsimd.BroadcastFloat32x16(a1[p])
		acc10 = v.MulAdd(b0, acc10)
		acc11 = v.MulAdd(b1, acc11)
		v = archsimd.BroadcastFloat32x16(a2[p])
		acc20 = v.MulAdd(b0, acc20)
		acc21 = v.MulAdd(b1, acc21)
		v = archsimd.BroadcastFloat32x16(a3[p])
		acc30 = v.MulAdd(b0, acc30)
		acc31 = v.MulAdd(b1, acc31)
	}
	acc00.Store((*[16]float32)(c0[0:16]))
	acc01.Store((*[16]float32)(c0[16:32]))
	acc10.Store((*[16]float32)(c1[0:16]))
	acc11.Store((*[16]float32)(c1[16:32]))
	acc20.Store((*[16]float32)(c2[0:16]))
	acc21.Store((*[16]float32)(c2[16:32]))
	acc30.Store((*[16]float32)(c3[0:16]))
	acc31.Store((*[16]float32)(c3[16:32]))
}

// nnRowTail does columns j.. of one row of c, as sgemmNNGeneric does.
func nnRowTail(k, n, j int, a, b, crow []float32) {
	for p := 0; p < k; p++ {
		Axpy(a[p], b[p*n+j:(p+1)*n], crow[j:])
	}
}

// SgemmNT adds a·bᵀ to c: a is m×k, b is n×k, c is m×n, all row-major.
// Each element is a long dot product; with AVX-512 a micro-kernel runs 4
// rows of a against 4 rows of b with sixteen accumulators, over blocks of
// 512 of k, each block's sums added to c. The rows and columns that do
// not fill a 4×4 block are Dot's.
func SgemmNT(m, n, k int, a, b, c []float32) {
	if !hasAVX512 && !hasAVX2 {
		sgemmNTGeneric(m, n, k, a, b, c)
		return
	}
	// Blocks of k keep the rows of a and b being multiplied in L1/L2
	// instead of streaming whole rows from memory for every 4×4 block.
	const kc = 512
	m4, n4 := m/4*4, n/4*4
	for p0 := 0; p0 < k; p0 += kc {
		p1 := min(p0+kc, k)
		for i := 0; i < m4; i += 4 {
			for j := 0; j < n4; j += 4 {
				kernelNT4x4(p1-p0, k, a[i*k+p0:], b[j*k+p0:], c[i*n+j:], n)
			}
			for j := n4; j < n; j++ {
				for r := i; r < i+4; r++ {
					c[r*n+j] += Dot(a[r*k+p0:r*k+p1], b[j*k+p0:j*k+p1])
				}
			}
		}
		for i := m4; i < m; i++ {
			for j := 0; j < n; j++ {
				c[i*n+j] += Dot(a[i*k+p0:i*k+p1], b[j*k+p0:j*k+p1])
			}
		}
	}
}

// kernelNT4x4 adds the 4×4 block of dot products of length k of rows of a
// and b (each lda apart) to c, as two 2×4 passes: eight accumulators and
// five operands fit the sixteen vector registers Go allocates.
func kernelNT4x4(k, lda int, a, b, c []float32, ldc int) {
	if !hasAVX512 {
		kernelNT2x4AVX2(k, lda, a, b, c, ldc)
		kernelNT2x4AVX2(k, lda, a[2*lda:], b, c[2*ldc:], ldc)
		return
	}
	kernelNT2x4(k, lda, a, b, c, ldc)
	kernelNT2x4(k, lda, a[2*lda:], b, c[2*ldc:], ldc)
}

// kernelNT2x4 runs fused multiply-adds over whole vectors of 16, adds the
// lanes in order and then the generic dot product of the rest; when k < 16
// that is the generic dot product alone.
func kernelNT2x4(k, lda int, a, b, c []float32, ldc int) {
	a0, a1 := a[:k], a[lda:lda+k]
	b0, b1, b2, b3 := b[:k], b[lda:lda+k], b[2*lda:2*lda+k], b[3*lda:3*lda+k]
	var s00, s01, s02, s03, s10, s11, s12, s13 archsimd.Float32x16
	p := 0
	for ; p+16 <= k; p += 16 {
		y0 := archsimd.LoadFloat32x16((*[16]float32)(b0[p : p+16]))
		y1 := archsimd.LoadFloat32x16((*[16]float32)(b1[p : p+16]))
		y2 := archsimd.LoadFloat32x16((*[16]float32)(b2[p : p+16]))
		y3 := archsimd.LoadFloat32x16((*[16]float32)(b3[p : p+16]))
		x0 := archsimd.LoadFloat32x16((*[16]float32)(a0[p : p+16]))
		s00 = x0.MulAdd(y0, s00)
		s01 = x0.MulAdd(y1, s01)
		s02 = x0.MulAdd(y2, s02)
		s03 = x0.MulAdd(y3, s03)
		x1 := archsimd.LoadFloat32x16((*[16]float32)(a1[p : p+16]))
		s10 = x1.MulAdd(y0, s10)
		s11 = x1.MulAdd(y1, s11)
		s12 = x1.MulAdd(y2, s12)
		s13 = x1.MulAdd(y3, s13)
	}
	sums := [2][4]archsimd.Float32x16{{s00, s01, s02, s03}, {s10, s11, s12, s13}}
	rowsA := [2][]float32{a0, a1}
	rowsB := [4][]float32{b0, b1, b2, b3}
	for r := 0; r < 2; r++ {
		for q := 0; q < 4; q++ {
			var s float32
			switch {
			case p == 0:
				s = dotGeneric(rowsA[r], rowsB[q])
			case p == k:
				s = hsum(sums[r][q])
			default:
				s = hsum(sums[r][q]) + dotGeneric(rowsA[r][p:], rowsB[q][p:])
			}
			c[r*ldc+q] += s
		}
	}
}

// Conv is a stride-1 convolution of a padded input: for o < cout, r < rows
// and c < wo, y[o·ys + r·wo + c] = bias[o] + Σₜ w[o][t]·xp[off[t] + r·wp + c]
// (ReLU'd when relu), packed holding w as PackConv lays it out and off
// increasing. With AVX2 (AVX-512 CPUs have it too) it works on four output
// channels by 16 or 8 columns at a time, one fused multiply-add per tap, in
// tap order; columns past the last multiple of 8 take the generic loop.
func Conv(cout int, packed, bias []float32, off []int, xp []float32, wp int, y []float32, ys, rows, wo int, relu bool) {
	if !hasAVX2 || wo < 8 || rows == 0 || len(off) == 0 {
		convGeneric(cout, packed, bias, off, xp, wp, y, ys, rows, wo, 0, relu)
		return
	}
	convAVX2(cout, packed, bias, off, xp, wp, y, ys, rows, wo, relu)
}

// vecWidth is the vector width of Dot, Axpy and the matrix products
// (0: the generic loops).
func vecWidth() int {
	switch {
	case hasAVX512:
		return 16
	case hasAVX2:
		return 8
	}
	return 0
}

// convWidth is the vector width of Conv (0: the generic loop).
func convWidth() int {
	if hasAVX2 {
		return 8
	}
	return 0
}

// ConvGradW adds the weight gradient of Conv over a band to dw ([cout][taps]):
// dw[o][t] += Σ_{r<rows, c<wo} dy[o·ys + r·wo + c] · xp[off[t] + r·wp + c].
// With AVX2 four output channels and two taps at a time are summed in
// eight vectors over the whole band, columns past the last multiple of 8
// and channels past the last multiple of 4 by the generic loop.
func ConvGradW(cout int, dy []float32, ys, rows, wo int, off []int, xp []float32, wp int, dw []float32) {
	if !hasAVX2 || wo < 8 || rows == 0 || len(off) == 0 {
		convGradWGeneric(cout, dy, ys, rows, wo, off, xp, wp, dw, 0, 0)
		return
	}
	convGradWAVX2(cout, dy, ys, rows, wo, off, xp, wp, dw)
}
