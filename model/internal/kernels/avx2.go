//go:build goexperiment.simd && amd64

package kernels

import (
	"simd/archsimd"
	"sync"
	"unsafe"
)

// The AVX2 kernels: on a CPU with AVX2 and FMA but no AVX-512, the
// convolution and the matrix products run on vectors of eight.

var hasAVX2 = archsimd.X86.AVX2() && archsimd.X86.FMA()

func load8(x []float32, at int) archsimd.Float32x8 {
	return archsimd.LoadFloat32x8((*[8]float32)(x[at : at+8]))
}

// store8 writes v (ReLU'd when relu) to y[at:at+8].
func store8(v archsimd.Float32x8, y []float32, at int, relu bool) {
	if relu {
		var zero archsimd.Float32x8
		v = zero.Merge(v, v.LessEqual(zero))
	}
	v.Store((*[8]float32)(y[at : at+8]))
}

// convAVX2 is Conv on vectors of eight: four output channels by 16 or 8
// columns at a time. The kernels load without bounds checks: convAVX2 checks
// once that the furthest element any of them reads is in xp.
func convAVX2(cout int, packed, bias []float32, off []int, xp []float32, wp int, y []float32, ys, rows, wo int, relu bool) {
	taps := len(off)
	full := wo / 8 * 8
	for t := 1; t < taps; t++ {
		if off[t] < off[t-1] || off[0] < 0 {
			panic("kernels.Conv: tap offsets not increasing")
		}
	}
	if off[taps-1]+(rows-1)*wp+full > len(xp) || len(packed) < 4*taps*((cout+3)/4) {
		panic("kernels.Conv: input band or weights too short")
	}
	sink := sinkFor(cout, rows*wo)
	defer sink.release()
	for b := 0; b*4 < cout; b++ {
		w := packed[b*taps*4 : (b+1)*taps*4]
		var bv [4]float32
		var outs [4][]float32
		for j := range 4 {
			if o := 4*b + j; o < cout {
				bv[j] = bias[o]
				outs[j] = y[o*ys : o*ys+rows*wo]
			} else {
				outs[j] = sink.buf
			}
		}
		for r := 0; r < rows; r++ {
			x := xp[r*wp:]
			c := 0
			for ; c+16 <= full; c += 16 {
				conv4x16(x[c:], off, w, &outs, r*wo+c, &bv, relu)
			}
			if c < full {
				conv4x8(x[c:], off, w, &outs, r*wo+c, &bv, relu)
			}
		}
	}
	if full < wo {
		convGeneric(cout, packed, bias, off, xp, wp, y, ys, rows, wo, full, relu)
	}
}

// conv4x16 adds the taps of four output channels (w: [tap][4]) over 16
// columns starting at x[off[t]], in eight accumulators, and stores them at
// y[j][at:]. Its caller has checked that x[off[t]:off[t]+16] and w[:4·taps]
// exist.
func conv4x16(x []float32, off []int, w []float32, y *[4][]float32, at int, b *[4]float32, relu bool) {
	a00 := archsimd.BroadcastFloat32x8(b[0])
	a10 := archsimd.BroadcastFloat32x8(b[1])
	a20 := archsimd.BroadcastFloat32x8(b[2])
	a30 := archsimd.BroadcastFloat32x8(b[3])
	a01, a11, a21, a31 := a00, a10, a20, a30
	px := unsafe.Pointer(unsafe.SliceData(x))
	pw := unsafe.Pointer(unsafe.SliceData(w))
	for t, d := range off {
		p := unsafe.Add(px, 4*d)
		x0 := archsimd.LoadFloat32x8((*[8]float32)(p))
		x1 := archsimd.LoadFloat32x8((*[8]float32)(unsafe.Add(p, 32)))
		ws := (*[4]float32)(unsafe.Add(pw, 16*t))
		v := archsimd.BroadcastFloat32x8(ws[0])
		a00, a01 = x0.MulAdd(v, a00), x1.MulAdd(v, a01)
		v = archsimd.BroadcastFloat32x8(ws[1])
		a10, a11 = x0.MulAdd(v, a10), x1.MulAdd(v, a11)
		v = archsimd.BroadcastFloat32x8(ws[2])
		a20, a21 = x0.MulAdd(v, a20), x1.MulAdd(v, a21)
		v = archsimd.BroadcastFloat32x8(ws[3])
		a30, a31 = x0.MulAdd(v, a30), x1.MulAdd(v, a31)
	}
	store8(a00, y[0], at, relu)
	store8(a01, y[0], at+8, relu)
	store8(a10, y[1], at, relu)
	store8(a11, y[1], at+8, relu)
	store8(a20, y[2], at, relu)
	store8(a21, y[2], at+8, relu)
	store8(a30, y[3], at, relu)
	store8(a31, y[3], at+8, relu)
}

// conv4x8 is conv4x16 over 8 columns.
func conv4x8(x []float32, off []int, w []float32, y *[4][]float32, at int, b *[4]float32, relu bool) {
	a0 := archsimd.BroadcastFloat32x8(b[0])
	a1 := archsimd.BroadcastFloat32x8(b[1])
	a2 := archsimd.BroadcastFloat32x8(b[2])
	a3 := archsimd.BroadcastFloat32x8(b[3])
	px := unsafe.Pointer(unsafe.SliceData(x))
	pw := unsafe.Pointer(unsafe.SliceData(w))
	for t, d := range off {
		x0 := archsimd.LoadFloat32x8((*[8]float32)(unsafe.Add(px, 4*d)))
		ws := (*[4]float32)(unsafe.Add(pw, 16*t))
		a0 = x0.MulAdd(archsimd.BroadcastFloat32x8(ws[0]), a0)
		a1 = x0.MulAdd(archsimd.BroadcastFloat32x8(ws[1]), a1)
		a2 = x0.MulAdd(archsimd.BroadcastFloat32x8(ws[2]), a2)
		a3 = x0.MulAdd(archsimd.BroadcastFloat32x8(ws[3]), a3)
	}
	store8(a0, y[0], at, relu)
	store8(a1, y[1], at, relu)
	store8(a2, y[2], at, relu)
	store8(a3, y[3], at, relu)
}

// hsum8 adds the lanes of v in order.
func hsum8(v archsimd.Float32x8) float32 {
	var t [8]float32
	v.Store(&t)
	var s float32
	for _, x := range t {
		s += x
	}
	return s
}

// axpyAVX2 is Axpy on vectors of eight (a multiply, then an add).
func axpyAVX2(alpha float32, x, y []float32) int {
	va := archsimd.BroadcastFloat32x8(alpha)
	i := 0
	for ; i+8 <= len(x); i += 8 {
		va.Mul(load8(x, i)).Add(load8(y, i)).Store((*[8]float32)(y[i : i+8]))
	}
	return i
}

// dotAVX2 is Dot on two vectors of eight over blocks of 16, the lanes
// then added in order, then the generic sum of the rest.
func dotAVX2(x, y []float32) float32 {
	y = y[:len(x)]
	var a0, a1 archsimd.Float32x8
	i := 0
	for ; i+16 <= len(x); i += 16 {
		a0 = load8(x, i).MulAdd(load8(y, i), a0)
		a1 = load8(x, i+8).MulAdd(load8(y, i+8), a1)
	}
	s := hsum8(a0.Add(a1))
	if i < len(x) {
		s += dotGeneric(x[i:], y[i:])
	}
	return s
}

// sgemmNNAVX2 is SgemmNN with a 4×16 block of c in eight registers.
func sgemmNNAVX2(m, n, k int, a, b, c []float32) {
	if k == 0 {
		return
	}
	m4 := m / 4 * 4
	j := 0
	for ; j+16 <= n; j += 16 {
		for i := 0; i < m4; i += 4 {
			kernelNN4x16(k, n, a[i*k:], b[j:], c[i*n+j:])
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

// kernelNN4x16 adds rows 0-3 of a (k long) times the k×16 panel of b
// (rows n apart) to the 4×16 block of c (rows n apart). The loads of b go
// without bounds checks: the panel's last row is checked once.
func kernelNN4x16(k, n int, a, b, c []float32) {
	_ = b[(k-1)*n+15] // the panel's last element
	c0, c1, c2, c3 := c, c[n:], c[2*n:], c[3*n:]
	acc00, acc01 := load8(c0, 0), load8(c0, 8)
	acc10, acc11 := load8(c1, 0), load8(c1, 8)
	acc20, acc21 := load8(c2, 0), load8(c2, 8)
	acc30, acc31 := load8(c3, 0), load8(c3, 8)
	a0, a1, a2, a3 := a[:k], a[k:2*k], a[2*k:3*k], a[3*k:4*k]
	pb := unsafe.Pointer(unsafe.SliceData(b))
	for p := 0; p < k; p++ {
		row := unsafe.Add(pb, 4*p*n)
		b0 := archsimd.LoadFloat32x8((*[8]float32)(row))
		b1 := archsimd.LoadFloat32x8((*[8]float32)(unsafe.Add(row, 32)))
		v := archsimd.BroadcastFloat32x8(a0[p])
		acc00, acc01 = v.MulAdd(b0, acc00), v.MulAdd(b1, acc01)
		v = archsimd.BroadcastFloat32x8(a1[p])
		acc10, acc11 = v.MulAdd(b0, acc10), v.MulAdd(b1, acc11)
		v = archsimd.BroadcastFloat32x8(a2[p])
		acc20, acc21 = v.MulAdd(b0, acc20), v.MulAdd(b1, acc21)
		v = archsimd.BroadcastFloat32x8(a3[p])
		acc30, acc31 = v.MulAdd(b0, acc30), v.MulAdd(b1, acc31)
	}
	store8(acc00, c0, 0, false)
	store8(acc01, c0, 8, false)
	store8(acc10, c1, 0, false)
	store8(acc11, c1, 8, false)
	store8(acc20, c2, 0, false)
	store8(acc21, c2, 8, false)
	store8(acc30, c3, 0, false)
	store8(acc31, c3, 8, false)
}

// kernelNT2x4AVX2 is kernelNT2x4 on vectors of eight.
func kernelNT2x4AVX2(k, lda int, a, b, c []float32, ldc int) {
	a0, a1 := a[:k], a[lda:lda+k]
	b0, b1, b2, b3 := b[:k], b[lda:lda+k], b[2*lda:2*lda+k], b[3*lda:3*lda+k]
	var s00, s01, s02, s03, s10, s11, s12, s13 archsimd.Float32x8
	// The six rows are k long (sliced above): the loads below stay inside
	// them without bounds checks.
	pa0, pa1 := unsafe.Pointer(unsafe.SliceData(a0)), unsafe.Pointer(unsafe.SliceData(a1))
	pb0, pb1 := unsafe.Pointer(unsafe.SliceData(b0)), unsafe.Pointer(unsafe.SliceData(b1))
	pb2, pb3 := unsafe.Pointer(unsafe.SliceData(b2)), unsafe.Pointer(unsafe.SliceData(b3))
	p := 0
	for ; p+8 <= k; p += 8 {
		o := uintptr(4 * p)
		y0 := archsimd.LoadFloat32x8((*[8]float32)(unsafe.Add(pb0, o)))
		y1 := archsimd.LoadFloat32x8((*[8]float32)(unsafe.Add(pb1, o)))
		y2 := archsimd.LoadFloat32x8((*[8]float32)(unsafe.Add(pb2, o)))
		y3 := archsimd.LoadFloat32x8((*[8]float32)(unsafe.Add(pb3, o)))
		x0 := archsimd.LoadFloat32x8((*[8]float32)(unsafe.Add(pa0, o)))
		s00, s01, s02, s03 = x0.MulAdd(y0, s00), x0.MulAdd(y1, s01), x0.MulAdd(y2, s02), x0.MulAdd(y3, s03)
		x1 := archsimd.LoadFloat32x8((*[8]float32)(unsafe.Add(pa1, o)))
		s10, s11, s12, s13 = x1.MulAdd(y0, s10), x1.MulAdd(y1, s11), x1.MulAdd(y2, s12), x1.MulAdd(y3, s13)
	}
	sums := [2][4]archsimd.Float32x8{{s00, s01, s02, s03}, {s10, s11, s12, s13}}
	rowsA := [2][]float32{a0, a1}
	rowsB := [4][]float32{b0, b1, b2, b3}
	for r := 0; r < 2; r++ {
		for q := 0; q < 4; q++ {
			var s float32
			switch {
			case p == 0:
				s = dotGeneric(rowsA[r], rowsB[q])
			case p == k:
				s = hsum8(sums[r][q])
			default:
				s = hsum8(sums[r][q]) + dotGeneric(rowsA[r][p:], rowsB[q][p:])
			}
			c[r*ldc+q] += s
		}
	}
}

// sinks holds Conv's buffers for the outputs of the padding channels.
var sinks = sync.Pool{New: func() any { return new([]float32) }}

// convSink is where Conv writes the outputs of the channels past cout (a
// block of four holds them): nothing when cout is a multiple of four.
type convSink struct {
	p   *[]float32
	buf []float32
}

func sinkFor(cout, n int) convSink {
	if cout%4 == 0 {
		return convSink{}
	}
	p := sinks.Get().(*[]float32)
	if cap(*p) < n {
		*p = make([]float32, n)
	}
	return convSink{p: p, buf: (*p)[:n]}
}

func (s convSink) release() {
	if s.p != nil {
		sinks.Put(s.p)
	}
}

// convGradWAVX2 is ConvGradW on vectors of eight. Like convAVX2 it checks
// the furthest element the kernels read once, and they load unchecked.
func convGradWAVX2(cout int, dy []float32, ys, rows, wo int, off []int, xp []float32, wp int, dw []float32) {
	taps := len(off)
	full := wo / 8 * 8
	cout4 := cout / 4 * 4
	for t := 1; t < taps; t++ {
		if off[t] < off[t-1] || off[0] < 0 {
			panic("kernels.ConvGradW: tap offsets not increasing")
		}
	}
	if off[taps-1]+(rows-1)*wp+full > len(xp) || cout > 0 && (cout-1)*ys+rows*wo > len(dy) || len(dw) < cout*taps {
		panic("kernels.ConvGradW: band, gradient or weights too short")
	}
	pdy := unsafe.Pointer(unsafe.SliceData(dy))
	px := unsafe.Pointer(unsafe.SliceData(xp))
	for o := 0; o < cout4; o += 4 {
		d0 := unsafe.Add(pdy, 4*o*ys)
		t := 0
		for ; t+2 <= taps; t += 2 {
			gradW4x2(d0, ys, rows, wo, full, unsafe.Add(px, 4*off[t]), unsafe.Add(px, 4*off[t+1]), wp, dw[o*taps+t:], taps)
		}
		if t < taps {
			gradW4x1(d0, ys, rows, wo, full, unsafe.Add(px, 4*off[t]), wp, dw[o*taps+t:], taps)
		}
	}
	if full < wo {
		convGradWGeneric(cout4, dy, ys, rows, wo, off, xp, wp, dw, 0, full)
	}
	if cout4 < cout {
		convGradWGeneric(cout, dy, ys, rows, wo, off, xp, wp, dw, cout4, 0)
	}
}

// gradW4x2 sums dy of four channels (planes ys apart from d) times the
// band at two taps (x0, x1) over the band's rows and first full columns,
// and adds the eight sums to dw[j·taps + {0, 1}].
func gradW4x2(d unsafe.Pointer, ys, rows, wo, full int, x0, x1 unsafe.Pointer, wp int, dw []float32, taps int) {
	var s00, s01, s10, s11, s20, s21, s30, s31 archsimd.Float32x8
	for r := 0; r < rows; r++ {
		g0 := unsafe.Add(d, 4*r*wo)
		g1, g2, g3 := unsafe.Add(g0, 4*ys), unsafe.Add(g0, 8*ys), unsafe.Add(g0, 12*ys)
		a0, a1 := unsafe.Add(x0, 4*r*wp), unsafe.Add(x1, 4*r*wp)
		// Offsets from each row's start: no pointer ever leaves its array.
		for o := uintptr(0); o < uintptr(4*full); o += 32 {
			a := archsimd.LoadFloat32x8((*[8]float32)(unsafe.Add(a0, o)))
			b := archsimd.LoadFloat32x8((*[8]float32)(unsafe.Add(a1, o)))
			g := archsimd.LoadFloat32x8((*[8]float32)(unsafe.Add(g0, o)))
			s00, s01 = g.MulAdd(a, s00), g.MulAdd(b, s01)
			g = archsimd.LoadFloat32x8((*[8]float32)(unsafe.Add(g1, o)))
			s10, s11 = g.MulAdd(a, s10), g.MulAdd(b, s11)
			g = archsimd.LoadFloat32x8((*[8]float32)(unsafe.Add(g2, o)))
			s20, s21 = g.MulAdd(a, s20), g.MulAdd(b, s21)
			g = archsimd.LoadFloat32x8((*[8]float32)(unsafe.Add(g3, o)))
			s30, s31 = g.MulAdd(a, s30), g.MulAdd(b, s31)
		}
	}
	dw[0] += hsum8(s00)
	dw[1] += hsum8(s01)
	dw[taps] += hsum8(s10)
	dw[taps+1] += hsum8(s11)
	dw[2*taps] += hsum8(s20)
	dw[2*taps+1] += hsum8(s21)
	dw[3*taps] += hsum8(s30)
	dw[3*taps+1] += hsum8(s31)
}

// gradW4x1 is gradW4x2 for one tap.
func gradW4x1(d unsafe.Pointer, ys, rows, wo, full int, x0 unsafe.Pointer, wp int, dw []float32, taps int) {
	var s0, s1, s2, s3 archsimd.Float32x8
	for r := 0; r < rows; r++ {
		g0 := unsafe.Add(d, 4*r*wo)
		g1, g2, g3 := unsafe.Add(g0, 4*ys), unsafe.Add(g0, 8*ys), unsafe.Add(g0, 12*ys)
		a0 := unsafe.Add(x0, 4*r*wp)
		for o := uintptr(0); o < uintptr(4*full); o += 32 {
			a := archsimd.LoadFloat32x8((*[8]float32)(unsafe.Add(a0, o)))
			s0 = archsimd.LoadFloat32x8((*[8]float32)(unsafe.Add(g0, o))).MulAdd(a, s0)
			s1 = archsimd.LoadFloat32x8((*[8]float32)(unsafe.Add(g1, o))).MulAdd(a, s1)
			s2 = archsimd.LoadFloat32x8((*[8]float32)(unsafe.Add(g2, o))).MulAdd(a, s2)
			s3 = archsimd.LoadFloat32x8((*[8]float32)(unsafe.Add(g3, o))).MulAdd(a, s3)
		}
	}
	dw[0] += hsum8(s0)
	dw[taps] += hsum8(s1)
	dw[2*taps] += hsum8(s2)
	dw[3*taps] += hsum8(s3)
}

// relu8 is ReLU on a vector: 0 where v <= 0, v elsewhere (NaN included).
func relu8(v, zero archsimd.Float32x8) archsimd.Float32x8 {
	return zero.Merge(v, v.LessEqual(zero))
}

// The element-wise AVX2 loops below do the generic loops' operations in
// their order (no fused multiply-add) and return how many elements they
// did; the callers hand the rest to the generic loops.

func reluAVX2(y, x []float32) int {
	var zero archsimd.Float32x8
	i := 0
	for ; i+8 <= len(x); i += 8 {
		relu8(load8(x, i), zero).Store((*[8]float32)(y[i : i+8]))
	}
	return i
}

func reluGradAVX2(dx, dy, y []float32) int {
	var zero archsimd.Float32x8
	i := 0
	for ; i+8 <= len(dy); i += 8 {
		m := load8(y, i).Greater(zero)
		load8(dy, i).Masked(m).Store((*[8]float32)(dx[i : i+8]))
	}
	return i
}

func bnNormalizeAVX2(x, xh, y []float32, m, is, g, b float32, relu bool) int {
	vm, vis, vg, vb := archsimd.BroadcastFloat32x8(m), archsimd.BroadcastFloat32x8(is), archsimd.BroadcastFloat32x8(g), archsimd.BroadcastFloat32x8(b)
	var zero archsimd.Float32x8
	i := 0
	for ; i+8 <= len(x); i += 8 {
		h := load8(x, i).Sub(vm).Mul(vis)
		h.Store((*[8]float32)(xh[i : i+8]))
		o := h.Mul(vg).Add(vb)
		if relu {
			o = relu8(o, zero)
		}
		o.Store((*[8]float32)(y[i : i+8]))
	}
	return i
}

func bnApplyAVX2(x, y []float32, a, c float32, relu bool) int {
	va, vc := archsimd.BroadcastFloat32x8(a), archsimd.BroadcastFloat32x8(c)
	var zero archsimd.Float32x8
	i := 0
	for ; i+8 <= len(x); i += 8 {
		o := load8(x, i).Mul(va).Add(vc)
		if relu {
			o = relu8(o, zero)
		}
		o.Store((*[8]float32)(y[i : i+8]))
	}
	return i
}

func bnBackwardAVX2(d, xh, dx []float32, k, mdb, mdg float32) int {
	vk, vdb, vdg := archsimd.BroadcastFloat32x8(k), archsimd.BroadcastFloat32x8(mdb), archsimd.BroadcastFloat32x8(mdg)
	i := 0
	for ; i+8 <= len(d); i += 8 {
		v := load8(d, i).Sub(vdb)
		h := load8(xh, i)
		v.Sub(h.Mul(vdg)).Mul(vk).Store((*[8]float32)(dx[i : i+8]))
	}
	return i
}

// sum64AVX2 is Sum64 in eight float32 lanes per block of 4096, the blocks
// added in float64; it returns the sum of the first n elements and n.
func sum64AVX2(x []float32) (float64, int) {
	var total float64
	i := 0
	for len(x)-i >= 8 {
		blk := x[i : i+min(len(x)-i, 4096)/8*8]
		var acc archsimd.Float32x8
		for j := 0; j < len(blk); j += 8 {
			acc = acc.Add(load8(blk, j))
		}
		total += float64(hsum8(acc))
		i += len(blk)
	}
	return total, i
}

// sumSqDev64AVX2 is SumSqDev64 blocked like sum64AVX2.
func sumSqDev64AVX2(x []float32, m float32) (float64, int) {
	vm := archsimd.BroadcastFloat32x8(m)
	var total float64
	i := 0
	for len(x)-i >= 8 {
		blk := x[i : i+min(len(x)-i, 4096)/8*8]
		var acc archsimd.Float32x8
		for j := 0; j < len(blk); j += 8 {
			d := load8(blk, j).Sub(vm)
			acc = d.MulAdd(d, acc)
		}
		total += float64(hsum8(acc))
		i += len(blk)
	}
	return total, i
}

// dot2sum64AVX2 is Dot2Sum64 blocked like sum64AVX2.
func dot2sum64AVX2(d, x []float32) (float64, float64, int) {
	var s, t float64
	i := 0
	for len(d)-i >= 8 {
		n := min(len(d)-i, 4096) / 8 * 8
		bd, bx := d[i:i+n], x[i:i+n]
		var as, at archsimd.Float32x8
		for j := 0; j < n; j += 8 {
			v := load8(bd, j)
			as = v.MulAdd(load8(bx, j), as)
			at = at.Add(v)
		}
		s += float64(hsum8(as))
		t += float64(hsum8(at))
		i += n
	}
	return s, t, i
}
