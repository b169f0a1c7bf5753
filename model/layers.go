package model

import (
	"math"

	"github.com/flarego/flarego/model/internal/kernels"
)

// conv is Conv2d as im2col + matrix product, one image per task. The
// column matrix is rebuilt in backward rather than kept per image: it is
// cheap to make and is the largest buffer of all.
type conv struct {
	w, b           *Param32
	cin, h, wd     int // input
	cout, ho, wo   int // output
	k, stride, pad int
	kk             int // cin*k*k
	x              []float32
	y, dx          []float32
	scratch        *convScratch
	relu           bool        // a following ReLU, fused: applied to y, masks dy
	wt             []float32   // wᵀ, for dcols
	dwPart         [][]float32 // per worker partial dW
	needDX         bool
}

// convScratch is the per-worker column buffers all conv layers share.
type convScratch struct {
	cols, dcols [][]float32
}

func (s *convScratch) reserve(n int) {
	for len(s.cols) < workers {
		s.cols = append(s.cols, nil)
		s.dcols = append(s.dcols, nil)
	}
	for i := range s.cols {
		if len(s.cols[i]) < n {
			s.cols[i] = make([]float32, n)
			s.dcols[i] = make([]float32, n)
		}
	}
}

func newConv(w, b *Param32, in, out []int, k, stride, pad, maxBatch int, needDX bool, scratch *convScratch, relu bool) *conv {
	c := &conv{w: w, b: b, cin: in[0], h: in[1], wd: in[2], cout: out[0], ho: out[1], wo: out[2],
		k: k, stride: stride, pad: pad, needDX: needDX, scratch: scratch, relu: relu}
	c.kk = c.cin * k * k
	hw := c.ho * c.wo
	scratch.reserve(c.kk * hw)
	c.y = make([]float32, maxBatch*c.cout*hw)
	for i := 0; i < workers; i++ {
		c.dwPart = append(c.dwPart, make([]float32, len(w.W)))
	}
	if needDX {
		c.dx = make([]float32, maxBatch*c.cin*c.h*c.wd)
		c.wt = make([]float32, len(w.W))
	}
	return c
}

func (c *conv) forward(x []float32, n int, train bool) []float32 {
	c.x = x
	hw := c.ho * c.wo
	in := c.cin * c.h * c.wd
	parallelWorkers(n, func(wk, i int) {
		cols := c.scratch.cols[wk][:c.kk*hw]
		im2col(x[i*in:(i+1)*in], cols, c.cin, c.h, c.wd, c.k, c.stride, c.pad, c.ho, c.wo)
		y := c.y[i*c.cout*hw : (i+1)*c.cout*hw]
		for o := 0; o < c.cout; o++ {
			fill(y[o*hw:(o+1)*hw], c.b.W[o])
		}
		kernels.SgemmNN(c.cout, hw, c.kk, c.w.W, cols, y)
		if c.relu {
			kernels.Relu(y, y)
		}
	})
	return c.y[:n*c.cout*hw]
}

func (c *conv) backward(dy []float32, n int) []float32 {
	hw := c.ho * c.wo
	in := c.cin * c.h * c.wd
	if c.needDX {
		transpose(c.w.W, c.wt, c.cout, c.kk)
	}
	for _, p := range c.dwPart {
		clear(p)
	}
	// A fixed image-to-worker assignment keeps the gradient sums, and so
	// training, reproducible run to run.
	parallelStatic(n, func(wk, i int) {
		cols := c.scratch.cols[wk][:c.kk*hw]
		im2col(c.x[i*in:(i+1)*in], cols, c.cin, c.h, c.wd, c.k, c.stride, c.pad, c.ho, c.wo)
		d := dy[i*c.cout*hw : (i+1)*c.cout*hw]
		if c.relu {
			kernels.ReluGrad(d, d, c.y[i*c.cout*hw:(i+1)*c.cout*hw])
		}
		kernels.SgemmNT(c.cout, c.kk, hw, d, cols, c.dwPart[wk])
		if c.needDX {
			dcols := c.scratch.dcols[wk][:c.kk*hw]
			clear(dcols)
			kernels.SgemmNN(c.kk, hw, c.cout, c.wt, d, dcols)
			col2im(dcols, c.dx[i*in:(i+1)*in], c.cin, c.h, c.wd, c.k, c.stride, c.pad, c.ho, c.wo)
		}
	})
	for _, p := range c.dwPart {
		for j, v := range p {
			c.w.G[j] += v
		}
	}
	for i := 0; i < n; i++ {
		for o := 0; o < c.cout; o++ {
			c.b.G[o] += float32(kernels.Sum64(dy[(i*c.cout+o)*hw : (i*c.cout+o+1)*hw]))
		}
	}
	if !c.needDX {
		return nil
	}
	return c.dx[:n*in]
}

// im2col lays out each k×k patch of x (cin×h×w) as a column: row
// (ci*k+ky)*k+kx, column oy*wo+ox.
func im2col(x, cols []float32, cin, h, w, k, stride, pad, ho, wo int) {
	for ci := 0; ci < cin; ci++ {
		for ky := 0; ky < k; ky++ {
			for kx := 0; kx < k; kx++ {
				row := cols[((ci*k+ky)*k+kx)*ho*wo:]
				for oy := 0; oy < ho; oy++ {
					iy := oy*stride - pad + ky
					dst := row[oy*wo : (oy+1)*wo]
					if iy < 0 || iy >= h {
						clear(dst)
						continue
					}
					src := x[(ci*h+iy)*w:]
					if stride == 1 {
						// ix = ox - pad + kx, valid for ox in [lo, hi)
						lo, hi := max(0, pad-kx), min(wo, w+pad-kx)
						clear(dst[:max(lo, 0)])
						if hi > lo {
							copy(dst[lo:hi], src[lo-pad+kx:hi-pad+kx])
						}
						if hi < wo {
							clear(dst[max(hi, 0):])
						}
						continue
					}
					for ox := 0; ox < wo; ox++ {
						ix := ox*stride - pad + kx
						if ix < 0 || ix >= w {
							dst[ox] = 0
						} else {
							dst[ox] = src[ix]
						}
					}
				}
			}
		}
	}
}

// col2im is im2col's adjoint: it sums columns back into dx (overwriting dx).
func col2im(cols, dx []float32, cin, h, w, k, stride, pad, ho, wo int) {
	clear(dx)
	for ci := 0; ci < cin; ci++ {
		for ky := 0; ky < k; ky++ {
			for kx := 0; kx < k; kx++ {
				row := cols[((ci*k+ky)*k+kx)*ho*wo:]
				for oy := 0; oy < ho; oy++ {
					iy := oy*stride - pad + ky
					if iy < 0 || iy >= h {
						continue
					}
					src := row[oy*wo : (oy+1)*wo]
					dst := dx[(ci*h+iy)*w:]
					if stride == 1 {
						lo, hi := max(0, pad-kx), min(wo, w+pad-kx)
						if hi > lo {
							kernels.Axpy(1, src[lo:hi], dst[lo-pad+kx:hi-pad+kx])
						}
						continue
					}
					for ox := 0; ox < wo; ox++ {
						ix := ox*stride - pad + kx
						if ix >= 0 && ix < w {
							dst[ix] += src[ox]
						}
					}
				}
			}
		}
	}
}

func transpose(a, at []float32, rows, cols int) {
	for i := 0; i < rows; i++ {
		for j := 0; j < cols; j++ {
			at[j*rows+i] = a[i*cols+j]
		}
	}
}

// batchNorm is BatchNorm2d with PyTorch's semantics: batch statistics in
// training (running variance updated with the unbiased variance), running
// statistics in evaluation.
type batchNorm struct {
	g, b        *Param32
	rm, rv      []float32
	nbt         []int64
	c, hw       int
	eps, mom    float64
	y, xhat, dx []float32 // y is nil when the output overwrites the input
	out         []float32 // the last output (for a fused ReLU's mask)
	invstd      []float32
	relu        bool // a following ReLU, fused
}

// newBatchNorm makes a BatchNorm2d; with inPlace its output overwrites its
// input (backward needs only x̂, which it keeps).
func newBatchNorm(g, b *Param32, rm, rv []float32, nbt []int64, in []int, maxBatch int, eps, mom float64, inPlace, relu bool) *batchNorm {
	size := maxBatch * in[0] * in[1] * in[2]
	bn := &batchNorm{g: g, b: b, rm: rm, rv: rv, nbt: nbt, c: in[0], hw: in[1] * in[2], eps: eps, mom: mom, relu: relu,
		xhat: make([]float32, size), dx: make([]float32, size), invstd: make([]float32, in[0])}
	if !inPlace {
		bn.y = make([]float32, size)
	}
	return bn
}

func (bn *batchNorm) forward(x []float32, n int, train bool) []float32 {
	y := x[:n*bn.c*bn.hw]
	if bn.y != nil {
		y = bn.y[:n*bn.c*bn.hw]
	}
	bn.out = y
	if train {
		bn.nbt[0]++
	}
	parallelFor(bn.c, func(c int) {
		var mean, invstd float64
		if train {
			var s float64
			for i := 0; i < n; i++ {
				s += kernels.Sum64(x[(i*bn.c+c)*bn.hw : (i*bn.c+c+1)*bn.hw])
			}
			cnt := float64(n * bn.hw)
			mean = s / cnt
			var ss float64
			for i := 0; i < n; i++ {
				ss += kernels.SumSqDev64(x[(i*bn.c+c)*bn.hw:(i*bn.c+c+1)*bn.hw], float32(mean))
			}
			variance := ss / cnt
			invstd = 1 / math.Sqrt(variance+bn.eps)
			unbiased := variance
			if cnt > 1 {
				unbiased = ss / (cnt - 1)
			}
			bn.rm[c] = float32((1-bn.mom)*float64(bn.rm[c]) + bn.mom*mean)
			bn.rv[c] = float32((1-bn.mom)*float64(bn.rv[c]) + bn.mom*unbiased)
			bn.invstd[c] = float32(invstd)
		} else {
			mean = float64(bn.rm[c])
			invstd = 1 / math.Sqrt(float64(bn.rv[c])+bn.eps)
		}
		m, is, g, b := float32(mean), float32(invstd), bn.g.W[c], bn.b.W[c]
		for i := 0; i < n; i++ {
			off := (i*bn.c + c) * bn.hw
			xs, ys := x[off:off+bn.hw], y[off:off+bn.hw]
			if train {
				// Only training needs x̂ (for backward).
				kernels.BNNormalize(xs, bn.xhat[off:off+bn.hw], ys, m, is, g, b, bn.relu)
			} else {
				kernels.BNApply(xs, ys, is*g, b-m*is*g, bn.relu)
			}
		}
	})
	return y
}

func (bn *batchNorm) backward(dy []float32, n int) []float32 {
	dx := bn.dx[:n*bn.c*bn.hw]
	if bn.relu {
		kernels.ReluGrad(dy[:n*bn.c*bn.hw], dy[:n*bn.c*bn.hw], bn.out)
	}
	parallelFor(bn.c, func(c int) {
		var dg, db float64
		for i := 0; i < n; i++ {
			off := (i*bn.c + c) * bn.hw
			g, b := kernels.Dot2Sum64(dy[off:off+bn.hw], bn.xhat[off:off+bn.hw])
			dg += g
			db += b
		}
		bn.g.G[c] += float32(dg)
		bn.b.G[c] += float32(db)
		// dx = γ·invstd·(dy - mean(dy) - x̂·mean(dy·x̂)), the means in float64
		// so that no large terms cancel in float32.
		cnt := float64(n * bn.hw)
		k := bn.g.W[c] * bn.invstd[c]
		mdb, mdg := float32(db/cnt), float32(dg/cnt)
		for i := 0; i < n; i++ {
			off := (i*bn.c + c) * bn.hw
			kernels.BNBackward(dy[off:off+bn.hw], bn.xhat[off:off+bn.hw], dx[off:off+bn.hw], k, mdb, mdg)
		}
	})
	return dx
}

// relu is ReLU. With inPlace it overwrites its input and, in backward,
// the incoming gradient; otherwise it has buffers of its own.
type relu struct {
	size    int
	inPlace bool
	y, dx   []float32 // own buffers (nil in place)
	out     []float32 // the last forward's output, for the mask
}

func newReLU(size, maxBatch int, inPlace bool) *relu {
	r := &relu{size: size, inPlace: inPlace}
	if !inPlace {
		r.y, r.dx = make([]float32, size*maxBatch), make([]float32, size*maxBatch)
	}
	return r
}

func (r *relu) forward(x []float32, n int, train bool) []float32 {
	y := x[:n*r.size]
	if !r.inPlace {
		y = r.y[:n*r.size]
	}
	chunks(len(y), func(lo, hi int) {
		kernels.Relu(y[lo:hi], x[lo:hi])
	})
	r.out = y
	return y
}

func (r *relu) backward(dy []float32, n int) []float32 {
	dx := dy[:n*r.size]
	if !r.inPlace {
		dx = r.dx[:n*r.size]
	}
	chunks(len(dx), func(lo, hi int) {
		kernels.ReluGrad(dx[lo:hi], dy[lo:hi], r.out[lo:hi])
	})
	return dx
}

// chunks splits [0, n) into pieces of at least 64k elements for parallelFor.
func chunks(n int, f func(lo, hi int)) {
	const piece = 64 << 10
	parts := min(max(n/piece, 1), 4*workers)
	parallelFor(parts, func(i int) {
		f(i*n/parts, (i+1)*n/parts)
	})
}

// maxPool is MaxPool2d; it remembers where each maximum came from.
type maxPool struct {
	c, h, w, ho, wo, k, stride int
	y, dx                      []float32
	arg                        []int32
}

func newMaxPool(in, out []int, k, stride, maxBatch int) *maxPool {
	return &maxPool{c: in[0], h: in[1], w: in[2], ho: out[1], wo: out[2], k: k, stride: stride,
		y: make([]float32, maxBatch*out[0]*out[1]*out[2]), arg: make([]int32, maxBatch*out[0]*out[1]*out[2]),
		dx: make([]float32, maxBatch*in[0]*in[1]*in[2])}
}

func (p *maxPool) forward(x []float32, n int, train bool) []float32 {
	if p.k == 2 && p.stride == 2 {
		if train {
			parallelFor(n*p.c, func(pl int) { p.pool2x2(x, pl) })
		} else {
			parallelFor(n*p.c, func(pl int) { p.pool2x2Values(x, pl) })
		}
		return p.y[:n*p.c*p.ho*p.wo]
	}
	parallelFor(n*p.c, func(pl int) {
		src := x[pl*p.h*p.w : (pl+1)*p.h*p.w]
		base := pl * p.ho * p.wo
		for oy := 0; oy < p.ho; oy++ {
			for ox := 0; ox < p.wo; ox++ {
				best, at := float32(math.Inf(-1)), -1
				for ky := 0; ky < p.k; ky++ {
					row := (oy*p.stride + ky) * p.w
					for kx := 0; kx < p.k; kx++ {
						idx := row + ox*p.stride + kx
						// NaN propagates, as in PyTorch.
						if v := src[idx]; v > best || v != v || at < 0 {
							best, at = v, idx
							if v != v {
								break
							}
						}
					}
				}
				p.y[base+oy*p.wo+ox] = best
				p.arg[base+oy*p.wo+ox] = int32(at)
			}
		}
	})
	return p.y[:n*p.c*p.ho*p.wo]
}

// pool2x2 is the 2×2, stride 2 case, two input rows at a time. Ties and
// NaNs resolve as in the general loop: the first maximum wins, NaN wins.
func (p *maxPool) pool2x2(x []float32, pl int) {
	src := x[pl*p.h*p.w : (pl+1)*p.h*p.w]
	base := pl * p.ho * p.wo
	for oy := 0; oy < p.ho; oy++ {
		r0 := src[2*oy*p.w : 2*oy*p.w+2*p.wo]
		r1 := src[(2*oy+1)*p.w : (2*oy+1)*p.w+2*p.wo]
		y := p.y[base+oy*p.wo : base+(oy+1)*p.wo]
		arg := p.arg[base+oy*p.wo : base+(oy+1)*p.wo]
		for ox := range y {
			a, b, c, d := r0[2*ox], r0[2*ox+1], r1[2*ox], r1[2*ox+1]
			best, at := a, 2*oy*p.w+2*ox
			if b > best || b != b {
				best, at = b, at+1
			}
			if best == best && (c > best || c != c) {
				best, at = c, (2*oy+1)*p.w+2*ox
			}
			if best == best && (d > best || d != d) {
				best, at = d, (2*oy+1)*p.w+2*ox+1
			}
			y[ox], arg[ox] = best, int32(at)
		}
	}
}

// pool2x2Values is pool2x2 for inference: values only, no positions.
func (p *maxPool) pool2x2Values(x []float32, pl int) {
	src := x[pl*p.h*p.w : (pl+1)*p.h*p.w]
	base := pl * p.ho * p.wo
	for oy := 0; oy < p.ho; oy++ {
		r0 := src[2*oy*p.w : 2*oy*p.w+2*p.wo]
		r1 := src[(2*oy+1)*p.w : (2*oy+1)*p.w+2*p.wo]
		y := p.y[base+oy*p.wo : base+(oy+1)*p.wo]
		for ox := range y {
			a, b := r0[2*ox], r0[2*ox+1]
			c, d := r1[2*ox], r1[2*ox+1]
			if b > a || b != b {
				a = b
			}
			if d > c || d != d {
				c = d
			}
			if c > a || c != c {
				a = c
			}
			y[ox] = a
		}
	}
}

func (p *maxPool) backward(dy []float32, n int) []float32 {
	dx := p.dx[:n*p.c*p.h*p.w]
	parallelFor(n*p.c, func(pl int) {
		d := dx[pl*p.h*p.w : (pl+1)*p.h*p.w]
		clear(d)
		base := pl * p.ho * p.wo
		for j := 0; j < p.ho*p.wo; j++ {
			d[p.arg[base+j]] += dy[base+j]
		}
	})
	return dx
}

// linear is Linear: y = x·Wᵀ + b.
type linear struct {
	w, b    *Param32
	in, out int
	x       []float32
	y, dx   []float32
	needDX  bool
}

func newLinear(w, b *Param32, in, out, maxBatch int, needDX bool) *linear {
	return &linear{w: w, b: b, in: in, out: out, y: make([]float32, maxBatch*out), dx: make([]float32, maxBatch*in), needDX: needDX}
}

func (l *linear) forward(x []float32, n int, train bool) []float32 {
	l.x = x
	y := l.y[:n*l.out]
	parallelFor(n*l.out, func(j int) {
		i, o := j/l.out, j%l.out
		y[j] = kernels.Dot(x[i*l.in:(i+1)*l.in], l.w.W[o*l.in:(o+1)*l.in]) + l.b.W[o]
	})
	return y
}

func (l *linear) backward(dy []float32, n int) []float32 {
	parallelFor(l.out, func(o int) {
		g := l.w.G[o*l.in : (o+1)*l.in]
		for i := 0; i < n; i++ {
			kernels.Axpy(dy[i*l.out+o], l.x[i*l.in:(i+1)*l.in], g)
			l.b.G[o] += dy[i*l.out+o]
		}
	})
	if !l.needDX {
		return nil
	}
	dx := l.dx[:n*l.in]
	parallelFor(n, func(i int) {
		d := dx[i*l.in : (i+1)*l.in]
		clear(d)
		for o := 0; o < l.out; o++ {
			kernels.Axpy(dy[i*l.out+o], l.w.W[o*l.in:(o+1)*l.in], d)
		}
	})
	return dx
}
