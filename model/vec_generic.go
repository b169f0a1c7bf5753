//go:build !(goexperiment.simd && amd64)

package model

// axpy adds alpha·x to y.
func axpy(alpha float32, x, y []float32) {
	y = y[:len(x)]
	for i, v := range x {
		y[i] += alpha * v
	}
}

// dot returns Σ x·y.
func dot(x, y []float32) float32 {
	y = y[:len(x)]
	var s0, s1, s2, s3 float32
	i := 0
	for ; i+4 <= len(x); i += 4 {
		s0 += x[i] * y[i]
		s1 += x[i+1] * y[i+1]
		s2 += x[i+2] * y[i+2]
		s3 += x[i+3] * y[i+3]
	}
	for ; i < len(x); i++ {
		s0 += x[i] * y[i]
	}
	return (s0 + s1) + (s2 + s3)
}

// sum64 returns Σ x in float64.
func sum64(x []float32) float64 {
	var s float64
	for _, v := range x {
		s += float64(v)
	}
	return s
}

// sumSqDev64 returns Σ (x-m)² in float64.
func sumSqDev64(x []float32, m float32) float64 {
	var s float64
	for _, v := range x {
		d := float64(v - m)
		s += d * d
	}
	return s
}

// reluInPlace sets negative values (and NaN) to 0.
func reluInPlace(x []float32) {
	for i, v := range x {
		if !(v > 0) {
			x[i] = 0
		}
	}
}

// maskBy zeroes d where y is not positive (a ReLU's backward).
func maskBy(d, y []float32) {
	y = y[:len(d)]
	for i := range d {
		if !(y[i] > 0) {
			d[i] = 0
		}
	}
}

// bnNormalize writes x̂ = (x-m)·is and y = x̂·g + b (ReLU'd when relu).
func bnNormalize(x, xh, y []float32, m, is, g, b float32, relu bool) {
	for j, v := range x {
		h := (v - m) * is
		xh[j] = h
		o := h*g + b
		if relu && !(o > 0) {
			o = 0
		}
		y[j] = o
	}
}

// bnApply writes y = x·a + c (ReLU'd when relu).
func bnApply(x, y []float32, a, c float32, relu bool) {
	for j, v := range x {
		o := v*a + c
		if relu && !(o > 0) {
			o = 0
		}
		y[j] = o
	}
}

// dot2sum64 returns Σ d·x and Σ d in float64.
func dot2sum64(d, x []float32) (float64, float64) {
	var s, t float64
	for j, v := range d {
		s += float64(v * x[j])
		t += float64(v)
	}
	return s, t
}

// bnBackward writes dx = k·(d - mdb - x̂·mdg).
func bnBackward(d, xh, dx []float32, k, mdb, mdg float32) {
	for j, v := range d {
		dx[j] = k * (v - mdb - xh[j]*mdg)
	}
}
