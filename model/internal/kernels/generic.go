package kernels

// The generic functions define every kernel's result. They are built on
// every platform. Each product and sum is rounded on its own: the explicit
// conversions (float32(a*b), float64(d*d)) keep the compiler from fusing a
// multiply and an add, which Go allows and does on some platforms, so these
// loops give the same bits everywhere.

func axpyGeneric(alpha float32, x, y []float32) {
	y = y[:len(x)]
	for i, v := range x {
		y[i] += float32(alpha * v)
	}
}

// dotGeneric sums in four partial sums, element i going to sum i%4 (the
// elements past the last multiple of four to the first), added as
// (s0+s1)+(s2+s3).
func dotGeneric(x, y []float32) float32 {
	y = y[:len(x)]
	var s0, s1, s2, s3 float32
	i := 0
	for ; i+4 <= len(x); i += 4 {
		s0 += float32(x[i] * y[i])
		s1 += float32(x[i+1] * y[i+1])
		s2 += float32(x[i+2] * y[i+2])
		s3 += float32(x[i+3] * y[i+3])
	}
	for ; i < len(x); i++ {
		s0 += float32(x[i] * y[i])
	}
	return (s0 + s1) + (s2 + s3)
}

// sum64Generic adds the elements in order, in float64.
func sum64Generic(x []float32) float64 {
	var s float64
	for _, v := range x {
		s += float64(v)
	}
	return s
}

// sumSqDev64Generic adds (x-m)² in order, in float64; x-m is rounded to
// float32 first.
func sumSqDev64Generic(x []float32, m float32) float64 {
	var s float64
	for _, v := range x {
		d := float64(v - m)
		s += float64(d * d)
	}
	return s
}

func reluGeneric(y, x []float32) {
	y = y[:len(x)]
	for i, v := range x {
		if v <= 0 {
			v = 0
		}
		y[i] = v
	}
}

func reluGradGeneric(dx, dy, y []float32) {
	dx, y = dx[:len(dy)], y[:len(dy)]
	for i, v := range dy {
		if !(y[i] > 0) {
			v = 0
		}
		dx[i] = v
	}
}

func bnNormalizeGeneric(x, xh, y []float32, m, is, g, b float32, relu bool) {
	xh, y = xh[:len(x)], y[:len(x)]
	for i, v := range x {
		h := (v - m) * is
		xh[i] = h
		o := float32(h*g) + b
		if relu && o <= 0 {
			o = 0
		}
		y[i] = o
	}
}

func bnApplyGeneric(x, y []float32, a, c float32, relu bool) {
	y = y[:len(x)]
	for i, v := range x {
		o := float32(v*a) + c
		if relu && o <= 0 {
			o = 0
		}
		y[i] = o
	}
}

// dot2sum64Generic adds d·x (the product rounded to float32) and d in
// order, in float64.
func dot2sum64Generic(d, x []float32) (float64, float64) {
	x = x[:len(d)]
	var s, t float64
	for i, v := range d {
		s += float64(v * x[i])
		t += float64(v)
	}
	return s, t
}

func bnBackwardGeneric(d, xh, dx []float32, k, mdb, mdg float32) {
	xh, dx = xh[:len(d)], dx[:len(d)]
	for i, v := range d {
		dx[i] = k * ((v - mdb) - float32(xh[i]*mdg))
	}
}

// sgemmNNGeneric is one axpyGeneric per element of a: c[i,:] += a[i,p]·b[p,:]
// for p in order, so every element of c adds its k products in order.
func sgemmNNGeneric(m, n, k int, a, b, c []float32) {
	for i := 0; i < m; i++ {
		crow := c[i*n : (i+1)*n]
		for p := 0; p < k; p++ {
			axpyGeneric(a[i*k+p], b[p*n:(p+1)*n], crow)
		}
	}
}

// sgemmNTGeneric is one dotGeneric per element of c.
func sgemmNTGeneric(m, n, k int, a, b, c []float32) {
	for i := 0; i < m; i++ {
		arow := a[i*k : (i+1)*k]
		for j := 0; j < n; j++ {
			c[i*n+j] += dotGeneric(arow, b[j*k:(j+1)*k])
		}
	}
}

// PackConv lays out the weights of a convolution for Conv: w is PyTorch's
// [cout][taps] (taps = cin·k·k), packed holds blocks of four output channels,
// tap-major within a block ([block][tap][4]); channels past cout are zero.
// It returns packed[:4·⌈cout/4⌉·taps], reusing packed when it is long enough.
func PackConv(w []float32, cout, taps int, packed []float32) []float32 {
	blocks := (cout + 3) / 4
	n := blocks * taps * 4
	if cap(packed) < n {
		packed = make([]float32, n)
	}
	packed = packed[:n]
	for b := 0; b < blocks; b++ {
		blk := packed[b*taps*4 : (b+1)*taps*4]
		for j := 0; j < 4; j++ {
			o := 4*b + j
			if o >= cout {
				for t := 0; t < taps; t++ {
					blk[4*t+j] = 0
				}
				continue
			}
			for t, v := range w[o*taps : (o+1)*taps] {
				blk[4*t+j] = v
			}
		}
	}
	return packed
}

// convGeneric is Conv for output columns [c0, wo) of every row: each output
// starts at its bias and adds its taps' products in tap order (row by row,
// one Axpy per tap).
func convGeneric(cout int, packed, bias []float32, off []int, xp []float32, wp int, y []float32, ys, rows, wo, c0 int, relu bool) {
	taps := len(off)
	for o := 0; o < cout; o++ {
		blk := packed[(o/4)*taps*4:]
		j := o % 4
		for r := 0; r < rows; r++ {
			yr := y[o*ys+r*wo+c0 : o*ys+(r+1)*wo]
			for c := range yr {
				yr[c] = bias[o]
			}
			for t, d := range off {
				at := d + r*wp + c0
				axpyGeneric(blk[4*t+j], xp[at:at+len(yr)], yr)
			}
			if relu {
				reluGeneric(yr, yr)
			}
		}
	}
}

// convGradWGeneric is ConvGradW for output channels [o0, cout) and columns
// [c0, wo): for each weight, the products in row and column order summed
// from zero, then added to dw.
func convGradWGeneric(cout int, dy []float32, ys, rows, wo int, off []int, xp []float32, wp int, dw []float32, o0, c0 int) {
	taps := len(off)
	for o := o0; o < cout; o++ {
		for t, d := range off {
			var s float32
			for r := 0; r < rows; r++ {
				dr := dy[o*ys+r*wo : o*ys+(r+1)*wo]
				xr := xp[d+r*wp:]
				for c := c0; c < wo; c++ {
					s += float32(dr[c] * xr[c])
				}
			}
			dw[o*taps+t] += s
		}
	}
}
