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

	// The direct kernel (stride 1): the packed weights and bias of this
	// forward, the tap offsets into a padded band, and per-worker bands.
	packed, pbias []float32
	off           []int
	bands         [][]float32
	// bn is a batch norm right after this conv: at inference it is folded
	// into the weights (and its ReLU applied here), and does nothing itself.
	bn    *batchNorm
	wfold []float32
	// The input gradient as a direct convolution of the padded output
	// gradient with the flipped, transposed weights (stride 1).
	packedT, zeroBias []float32
	offT              []int
	dyBands           [][]float32
}

// convBand is how many output rows the direct kernel takes at a time: the
// padded input they read stays in the core's cache.
const convBand = 8

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
	if stride == 1 && pad < k {
		wp, hb := c.wd+2*pad, min(convBand, c.ho)+k-1
		for ci := 0; ci < c.cin; ci++ {
			for ky := 0; ky < k; ky++ {
				for kx := 0; kx < k; kx++ {
					c.off = append(c.off, (ci*hb+ky)*wp+kx)
				}
			}
		}
		for range workers {
			c.bands = append(c.bands, make([]float32, c.cin*hb*wp))
		}
		c.pbias = make([]float32, c.cout)
		if needDX {
			// dx = conv(dy padded by k-1-pad, w flipped and transposed): its
			// input channels are this conv's outputs.
			pt := k - 1 - pad
			wpt, hbt := c.wo+2*pt, min(convBand, c.h)+k-1
			for o := 0; o < c.cout; o++ {
				for ky := 0; ky < k; ky++ {
					for kx := 0; kx < k; kx++ {
						c.offT = append(c.offT, (o*hbt+ky)*wpt+kx)
					}
				}
			}
			for range workers {
				c.dyBands = append(c.dyBands, make([]float32, c.cout*hbt*wpt))
			}
			c.zeroBias = make([]float32, c.cin)
		}
	}
	return c
}

// fillBand copies rows [r0-pad, r0-pad+n) of the planes of img (planes
// h×w) into band (planes of n rows of wp), zero where a row or column falls
// outside the image: the padded input a direct convolution reads.
func fillBand(band, img []float32, planes, h, w, wp, hb, r0, n, pad int) {
	for ci := 0; ci < planes; ci++ {
		for rr := 0; rr < n; rr++ {
			dst := band[(ci*hb+rr)*wp : (ci*hb+rr+1)*wp]
			iy := r0 + rr - pad
			if iy < 0 || iy >= h {
				clear(dst)
				continue
			}
			clear(dst[:pad])
			copy(dst[pad:pad+w], img[(ci*h+iy)*w:(ci*h+iy+1)*w])
			clear(dst[pad+w:])
		}
	}
}

func (c *conv) forward(x []float32, n int, train bool) []float32 {
	c.x = x
	if c.off != nil {
		return c.forwardDirect(x, n, train)
	}
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

// forwardDirect is forward for stride 1 without im2col: each task copies
// convBand output rows' worth of one image's input into a zero-padded band
// and runs kernels.Conv on it. At inference a following batch norm is
// folded into the weights and bias.
func (c *conv) forwardDirect(x []float32, n int, train bool) []float32 {
	hw := c.ho * c.wo
	in := c.cin * c.h * c.wd
	relu := c.relu
	if c.bn != nil && !train {
		c.packed = kernels.PackConv(c.foldBN(), c.cout, c.kk, c.packed)
		relu = c.bn.relu
	} else {
		c.packed = kernels.PackConv(c.w.W, c.cout, c.kk, c.packed)
		copy(c.pbias, c.b.W)
	}
	bands := (c.ho + convBand - 1) / convBand
	wp, hb := c.wd+2*c.pad, min(convBand, c.ho)+c.k-1
	parallelWorkers(n*bands, func(wk, task int) {
		i, r0 := task/bands, task%bands*convBand
		rows := min(convBand, c.ho-r0)
		band := c.bands[wk]
		fillBand(band, x[i*in:(i+1)*in], c.cin, c.h, c.wd, wp, hb, r0, rows+c.k-1, c.pad)
		y := c.y[i*c.cout*hw+r0*c.wo:]
		kernels.Conv(c.cout, c.packed, c.pbias, c.off, band, wp, y, hw, rows, c.wo, relu)
	})
	return c.y[:n*c.cout*hw]
}

// backwardDirect is backward for stride 1 without im2col. Each task, one
// band of one image, adds its weight gradient (kernels.ConvGradW over the
// same padded input band as forward) to its worker's partial sum, and
// computes its rows of dx as a direct convolution of the padded output
// gradient. Tasks go to workers in a fixed order, so the sums, and so
// training, are the same run to run.
func (c *conv) backwardDirect(dy []float32, n int) []float32 {
	hw := c.ho * c.wo
	in := c.cin * c.h * c.wd
	if c.relu {
		chunks(n*c.cout*hw, func(lo, hi int) { kernels.ReluGrad(dy[lo:hi], dy[lo:hi], c.y[lo:hi]) })
	}
	for _, p := range c.dwPart {
		clear(p)
	}
	if c.needDX {
		// w[o][ci][ky][kx] → wT[ci][o][k-1-ky][k-1-kx]
		kk := c.k * c.k
		if len(c.wt) != len(c.w.W) {
			c.wt = make([]float32, len(c.w.W))
		}
		for o := 0; o < c.cout; o++ {
			for ci := 0; ci < c.cin; ci++ {
				src := c.w.W[(o*c.cin+ci)*kk : (o*c.cin+ci+1)*kk]
				dst := c.wt[(ci*c.cout+o)*kk : (ci*c.cout+o+1)*kk]
				for j, v := range src {
					dst[kk-1-j] = v
				}
			}
		}
		c.packedT = kernels.PackConv(c.wt, c.cin, c.cout*kk, c.packedT)
	}
	bands := (c.ho + convBand - 1) / convBand
	wp, hb := c.wd+2*c.pad, min(convBand, c.ho)+c.k-1
	parallelStatic(n*bands, func(wk, task int) {
		i, r0 := task/bands, task%bands*convBand
		rows := min(convBand, c.ho-r0)
		band := c.bands[wk]
		fillBand(band, c.x[i*in:(i+1)*in], c.cin, c.h, c.wd, wp, hb, r0, rows+c.k-1, c.pad)
		kernels.ConvGradW(c.cout, dy[i*c.cout*hw+r0*c.wo:], hw, rows, c.wo, c.off, band, wp, c.dwPart[wk])
	})
	if c.needDX {
		pt := c.k - 1 - c.pad
		wpt, hbt := c.wo+2*pt, min(convBand, c.h)+c.k-1
		xbands := (c.h + convBand - 1) / convBand
		parallelWorkers(n*xbands, func(wk, task int) {
			i, r0 := task/xbands, task%xbands*convBand
			rows := min(convBand, c.h-r0)
			band := c.dyBands[wk]
			fillBand(band, dy[i*c.cout*hw:(i+1)*c.cout*hw], c.cout, c.ho, c.wo, wpt, hbt, r0, rows+c.k-1, pt)
			kernels.Conv(c.cin, c.packedT, c.zeroBias, c.offT, band, wpt, c.dx[i*in+r0*c.wd:], c.h*c.wd, rows, c.wd, false)
		})
	}
	return c.finishBackward(dy, n)
}

// foldBN returns the weights with the following batch norm's running
// statistics folded in (w·γ/√(σ²+ε)), and sets pbias to match; the scale
// and shift are the ones the batch norm applies itself at inference.
func (c *conv) foldBN() []float32 {
	bn := c.bn
	if len(c.wfold) != len(c.w.W) {
		c.wfold = make([]float32, len(c.w.W))
	}
	for o := 0; o < c.cout; o++ {
		a, sh := bn.evalAffine(o)
		for t, v := range c.w.W[o*c.kk : (o+1)*c.kk] {
			c.wfold[o*c.kk+t] = v * a
		}
		c.pbias[o] = c.b.W[o]*a + sh
	}
	return c.wfold
}

func (c *conv) backward(dy []float32, n int) []float32 {
	if c.off != nil {
		return c.backwardDirect(dy, n)
	}
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
	return c.finishBackward(dy, n)
}

// finishBackward adds the workers' partial weight gradients and the bias
// gradient to the parameters and returns dx (nil when not needed).
func (c *conv) finishBackward(dy []float32, n int) []float32 {
	hw := c.ho * c.wo
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
	return c.dx[:n*c.cin*c.h*c.wd]
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
	folded      bool // the conv before folds it in at inference
}

// evalAffine is what the batch norm does to channel c at inference:
// x·a + sh, from its running statistics.
func (bn *batchNorm) evalAffine(c int) (a, sh float32) {
	invstd := 1 / math.Sqrt(float64(bn.rv[c])+bn.eps)
	m, is := float32(bn.rm[c]), float32(invstd)
	g := bn.g.W[c]
	return is * g, bn.b.W[c] - m*is*g
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
	if bn.folded && !train {
		return x
	}
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
			a, sh := bn.evalAffine(c)
			for i := 0; i < n; i++ {
				off := (i*bn.c + c) * bn.hw
				kernels.BNApply(x[off:off+bn.hw], y[off:off+bn.hw], a, sh, bn.relu)
			}
			return
		}
		m, is, g, b := float32(mean), float32(invstd), bn.g.W[c], bn.b.W[c]
		for i := 0; i < n; i++ {
			off := (i*bn.c + c) * bn.hw
			kernels.BNNormalize(x[off:off+bn.hw], bn.xhat[off:off+bn.hw], y[off:off+bn.hw], m, is, g, b, bn.relu)
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
	part    []float32 // per-chunk sums of a wide input (nil when narrow)
}

// linearChunk is how much of a wide input one task of linear.forward
// takes: its slices of every image and every weight row stay in cache
// while each pair is multiplied, so the weights are read once per batch.
const linearChunk = 32 << 10

func newLinear(w, b *Param32, in, out, maxBatch int, needDX bool) *linear {
	l := &linear{w: w, b: b, in: in, out: out, y: make([]float32, maxBatch*out), dx: make([]float32, maxBatch*in), needDX: needDX}
	if in > linearChunk {
		l.part = make([]float32, (in+linearChunk-1)/linearChunk*maxBatch*out)
	}
	return l
}

func (l *linear) forward(x []float32, n int, train bool) []float32 {
	l.x = x
	y := l.y[:n*l.out]
	if l.part == nil {
		parallelFor(n*l.out, func(j int) {
			i, o := j/l.out, j%l.out
			y[j] = kernels.Dot(x[i*l.in:(i+1)*l.in], l.w.W[o*l.in:(o+1)*l.in]) + l.b.W[o]
		})
		return y
	}
	// A wide input (the pneumonia net's 401,408 features): each task takes
	// one chunk of the features for every image and output; the chunks'
	// sums are then added in order.
	tasks := (l.in + linearChunk - 1) / linearChunk
	parallelFor(tasks, func(c int) {
		lo, hi := c*linearChunk, min((c+1)*linearChunk, l.in)
		part := l.part[c*n*l.out : (c+1)*n*l.out]
		for o := 0; o < l.out; o++ {
			wo := l.w.W[o*l.in+lo : o*l.in+hi]
			for i := 0; i < n; i++ {
				part[i*l.out+o] = kernels.Dot(x[i*l.in+lo:i*l.in+hi], wo)
			}
		}
	})
	for j := range y {
		s := l.b.W[j%l.out]
		for c := 0; c < tasks; c++ {
			s += l.part[c*n*l.out+j]
		}
		y[j] = s
	}
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
