package model

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"sync"

	"github.com/flarego/flarego/persistor"
)

// A Net is a Spec with its weights, ready to run forward and backward on
// batches of up to MaxBatch images. All buffers are allocated once, when the
// net is built, so a training step allocates nothing.
type Net struct {
	Spec     *Spec
	MaxBatch int

	layers  []layer
	params  []*Param32 // learnable, in state-dict order
	state   []stateEntry
	inSize  int // C*H*W of one input
	classes int // values of the output
}

// MaxBatch is the largest batch a Net takes.
const MaxBatch = 4096

// maxNetBytes bounds the buffers NewNet allocates, so that a batch size and
// spec that together ask for more than a machine has fail with a message.
const maxNetBytes = 16 << 30

// bufferBytes is what NewNet allocates for batches of batch images: each
// layer's output and input-gradient buffers, the per-worker conv column
// buffers and partial gradients, and every parameter with its gradient and
// Adam's two moments.
func bufferBytes(s *Spec, shapes [][]int, batch int) int64 {
	b := int64(batch)
	var values, cols, params, convW int64
	in := int64(shapeSize(s.Input))
	values += 2 * b * in // the loader's two batch buffers
	for i, l := range s.Layers {
		o := int64(shapeSize(shapes[i]))
		fused := l.Op == "relu" && i > 0 && (s.Layers[i-1].Op == "conv2d" || s.Layers[i-1].Op == "batchnorm2d")
		switch {
		case fused, l.Op == "flatten":
		case l.Op == "conv2d":
			values += b * (o + in)
			prev := s.Input
			if i > 0 {
				prev = shapes[i-1]
			}
			w := int64(l.Out) * int64(prev[0]) * int64(l.Kernel) * int64(l.Kernel)
			cols = max(cols, int64(prev[0])*int64(l.Kernel)*int64(l.Kernel)*int64(shapes[i][1])*int64(shapes[i][2]))
			convW += w
			params += w + int64(l.Out)
		case l.Op == "batchnorm2d":
			values += 3 * b * o
			params += 4 * int64(shapes[i][0])
		case l.Op == "maxpool2d":
			values += 2*b*o + b*in
		case l.Op == "linear":
			values += b * (o + in)
			params += (in + 1) * o
		default: // relu, dropout
			values += 2 * b * o
		}
		in = o
	}
	w := int64(workers)
	return 4 * (values + 2*w*cols + w*convW + 4*params)
}

// Param32 is a learnable tensor and its gradient.
type Param32 struct {
	Name  string
	Shape []int
	W, G  []float32
}

// stateEntry is any state-dict entry (parameters and buffers) in order.
type stateEntry struct {
	name  string
	shape []int
	f32   []float32
	i64   []int64
}

type layer interface {
	// forward reads x (n images) and returns the layer's own output buffer.
	forward(x []float32, n int, train bool) []float32
	// backward takes dL/dy and returns dL/dx (the layer's own buffer), or nil
	// when the input needs no gradient.
	backward(dy []float32, n int) []float32
}

// NewNet builds the spec's network with the weights of sd, which must hold
// every entry the spec implies with the right shape (float64 counters, as
// NVFlare saves them, are accepted). The net copies the weights.
func NewNet(s *Spec, sd *persistor.StateDict, maxBatch int) (*Net, error) {
	if maxBatch <= 0 || maxBatch > MaxBatch {
		return nil, fmt.Errorf("batch size %d out of range (1..%d)", maxBatch, MaxBatch)
	}
	shapes, err := s.Shapes()
	if err != nil {
		return nil, err
	}
	if n := bufferBytes(s, shapes, maxBatch); n > maxNetBytes {
		return nil, fmt.Errorf("model %q with batch size %d needs %.1f GiB of buffers (at most %d GiB): use a smaller batch", s.Name, maxBatch, float64(n)/(1<<30), maxNetBytes>>30)
	}
	net := &Net{Spec: s, MaxBatch: maxBatch, inSize: shapeSize(s.Input), classes: shapes[len(shapes)-1][0]}
	get := func(name string, shape []int) ([]float32, error) {
		t := sd.Get(name)
		if t == nil {
			return nil, fmt.Errorf("state dict has no %s", name)
		}
		if fmt.Sprint(t.Shape) != fmt.Sprint(shape) {
			return nil, fmt.Errorf("%s has shape %v, the spec wants %v", name, t.Shape, shape)
		}
		if t.DType != persistor.Float32 {
			return nil, fmt.Errorf("%s is %s, want float32", name, t.DType)
		}
		f, _ := t.Float32s()
		// A tensor from the wire may declare more than it holds.
		if len(f) != shapeSize(shape) || len(t.Data) != 4*len(f) {
			return nil, fmt.Errorf("%s holds %d bytes, its shape %v needs %d", name, len(t.Data), shape, 4*shapeSize(shape))
		}
		return append([]float32(nil), f...), nil
	}
	param := func(name string, shape []int) (*Param32, error) {
		w, err := get(name, shape)
		if err != nil {
			return nil, err
		}
		p := &Param32{Name: name, Shape: shape, W: w, G: make([]float32, len(w))}
		net.params = append(net.params, p)
		net.state = append(net.state, stateEntry{name: name, shape: shape, f32: w})
		return p, nil
	}
	in := s.Input
	first := true
	// produced: some earlier layer owns the buffer the next layer reads, so
	// batch norm and ReLU may overwrite it (never the caller's input).
	produced := false
	scratch := &convScratch{}
	for i, l := range s.Layers {
		out := shapes[i]
		var ly layer
		// A ReLU right after a conv or batch norm runs inside it (on data
		// still in cache); the ReLU's own slot becomes a pass-through.
		fuseReLU := i+1 < len(s.Layers) && s.Layers[i+1].Op == "relu" && (l.Op == "conv2d" || l.Op == "batchnorm2d")
		if l.Op == "relu" && i > 0 && (s.Layers[i-1].Op == "conv2d" || s.Layers[i-1].Op == "batchnorm2d") {
			net.layers = append(net.layers, flatten{})
			in = out
			continue
		}
		switch l.Op {
		case "conv2d":
			k := l.Kernel
			w, err := param(l.Name+".weight", []int{l.Out, in[0], k, k})
			if err != nil {
				return nil, err
			}
			b, err := param(l.Name+".bias", []int{l.Out})
			if err != nil {
				return nil, err
			}
			stride := l.Stride
			if stride == 0 {
				stride = 1
			}
			ly = newConv(w, b, in, out, k, stride, l.Padding, maxBatch, !first, scratch, fuseReLU)
		case "batchnorm2d":
			c := in[0]
			g, err := param(l.Name+".weight", []int{c})
			if err != nil {
				return nil, err
			}
			b, err := param(l.Name+".bias", []int{c})
			if err != nil {
				return nil, err
			}
			rm, err := get(l.Name+".running_mean", []int{c})
			if err != nil {
				return nil, err
			}
			rv, err := get(l.Name+".running_var", []int{c})
			if err != nil {
				return nil, err
			}
			nbt := sd.Get(l.Name + ".num_batches_tracked")
			if nbt == nil || len(nbt.Shape) != 0 || nbt.DType.Size() == 0 || len(nbt.Data) != nbt.DType.Size() {
				return nil, fmt.Errorf("state dict has no 0-dim %s.num_batches_tracked", l.Name)
			}
			counter := []int64{int64(nbt.Float64At(0))}
			net.state = append(net.state,
				stateEntry{name: l.Name + ".running_mean", shape: []int{c}, f32: rm},
				stateEntry{name: l.Name + ".running_var", shape: []int{c}, f32: rv},
				stateEntry{name: l.Name + ".num_batches_tracked", i64: counter})
			eps, mom := l.Eps, l.Momentum
			if eps == 0 {
				eps = 1e-5
			}
			if mom == 0 {
				mom = 0.1
			}
			bn := newBatchNorm(g, b, rm, rv, counter, in, maxBatch, eps, mom, produced, fuseReLU)
			if i > 0 && s.Layers[i-1].Op == "conv2d" {
				if prev, ok := net.layers[len(net.layers)-1].(*conv); ok && prev.off != nil {
					// At inference the conv applies this batch norm (and its ReLU).
					prev.bn, bn.folded = bn, true
				}
			}
			ly = bn
		case "relu":
			ly = newReLU(shapeSize(in), maxBatch, produced)
		case "maxpool2d":
			stride := l.Stride
			if stride == 0 {
				stride = l.Kernel
			}
			ly = newMaxPool(in, out, l.Kernel, stride, maxBatch)
		case "flatten":
			ly = flatten{}
		case "dropout":
			ly = newDropout(shapeSize(in), maxBatch, l.P, uint64(i))
		case "linear":
			w, err := param(l.Name+".weight", []int{l.Out, in[0]})
			if err != nil {
				return nil, err
			}
			b, err := param(l.Name+".bias", []int{l.Out})
			if err != nil {
				return nil, err
			}
			ly = newLinear(w, b, in[0], l.Out, maxBatch, !first)
		}
		if l.Op == "conv2d" || l.Op == "linear" {
			first = false
		}
		if l.Op != "flatten" && l.Op != "dropout" {
			produced = true
		}
		net.layers = append(net.layers, ly)
		in = out
	}
	return net, nil
}

func shapeSize(s []int) int {
	n := 1
	for _, d := range s {
		n *= d
	}
	return n
}

// CheckFinite reports the first state entry holding a NaN or an infinity:
// weights that diverged must not be saved or sent as a model.
func (n *Net) CheckFinite() error {
	for _, e := range n.state {
		for _, v := range e.f32 {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				return fmt.Errorf("%s holds %v: training diverged (try a smaller learning rate)", e.name, v)
			}
		}
	}
	return nil
}

// Params returns the learnable parameters in state-dict order.
func (n *Net) Params() []*Param32 { return n.params }

// StateDict returns the net's state in PyTorch's order. The tensors share
// the net's memory: save them before the next step.
func (n *Net) StateDict() *persistor.StateDict {
	sd := persistor.NewStateDict()
	for _, e := range n.state {
		if e.i64 != nil {
			sd.Set(e.name, persistor.FromInt64(e.i64))
		} else {
			sd.Set(e.name, persistor.FromFloat32(e.f32, e.shape...))
		}
	}
	return sd
}

// Forward runs count images (count*C*H*W floats in x) and returns the logits
// (count*classes floats, owned by the net). train selects batch statistics
// and dropout, as PyTorch's module.train() does.
func (n *Net) Forward(x []float32, count int, train bool) ([]float32, error) {
	if count <= 0 || count > n.MaxBatch {
		return nil, fmt.Errorf("batch of %d images; this net takes 1 to %d", count, n.MaxBatch)
	}
	if len(x) != count*n.inSize {
		return nil, fmt.Errorf("input has %d values, want %d", len(x), count*n.inSize)
	}
	for _, l := range n.layers {
		x = l.forward(x, count, train)
	}
	return x, nil
}

// Backward propagates dL/dlogits through the net after a training Forward of
// the same batch, adding to every parameter's gradient.
func (n *Net) Backward(dlogits []float32, count int) {
	dy := dlogits
	for i := len(n.layers) - 1; i >= 0 && dy != nil; i-- {
		dy = n.layers[i].backward(dy, count)
	}
}

// ZeroGrad clears the gradients.
func (n *Net) ZeroGrad() {
	for _, p := range n.params {
		clear(p.G)
	}
}

// CrossEntropy returns PyTorch's CrossEntropyLoss (mean over the batch) of
// logits against labels, and writes dL/dlogits into grad. It uses a stable
// log-softmax (subtracting each row's own maximum).
func CrossEntropy(logits []float32, labels []int, classes int, grad []float32) (float64, error) {
	n := len(labels)
	if len(logits) != n*classes || len(grad) != len(logits) {
		return 0, errors.New("cross entropy: sizes do not match")
	}
	var loss float64
	for i := 0; i < n; i++ {
		row := logits[i*classes : (i+1)*classes]
		if labels[i] < 0 || labels[i] >= classes {
			return 0, fmt.Errorf("cross entropy: label %d out of range", labels[i])
		}
		m := row[0]
		for _, v := range row {
			m = max(m, v)
		}
		var sum float64
		for _, v := range row {
			sum += math.Exp(float64(v - m))
		}
		lse := float64(m) + math.Log(sum)
		loss += lse - float64(row[labels[i]])
		for j, v := range row {
			p := math.Exp(float64(v) - lse)
			if j == labels[i] {
				p--
			}
			grad[i*classes+j] = float32(p / float64(n))
		}
	}
	return loss / float64(n), nil
}

// Adam is PyTorch's torch.optim.Adam (no weight decay, no amsgrad).
type Adam struct {
	LR, Beta1, Beta2, Eps float64
	step                  int
	m, v                  [][]float32
}

// NewAdam returns Adam with PyTorch's defaults and the given learning rate.
func NewAdam(params []*Param32, lr float64) *Adam {
	a := &Adam{LR: lr, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8}
	for _, p := range params {
		a.m = append(a.m, make([]float32, len(p.W)))
		a.v = append(a.v, make([]float32, len(p.W)))
	}
	return a
}

// Step updates the parameters from their gradients, exactly as PyTorch's
// single-tensor Adam: m = β1·m + (1-β1)·g; v = β2·v + (1-β2)·g²;
// p -= lr/(1-β1^t) · m / (√v/√(1-β2^t) + ε). (Gorgonia's AdamSolver puts
// ε and the bias corrections elsewhere, so results drift from PyTorch's.)
func (a *Adam) Step(params []*Param32) error {
	if len(params) != len(a.m) {
		return fmt.Errorf("adam: %d parameters, set up for %d", len(params), len(a.m))
	}
	a.step1(params)
	return nil
}

func (a *Adam) step1(params []*Param32) {
	a.step++
	bc1 := 1 - math.Pow(a.Beta1, float64(a.step))
	bc2 := 1 - math.Pow(a.Beta2, float64(a.step))
	stepSize := float32(a.LR / bc1)
	sqrtBC2 := float32(math.Sqrt(bc2))
	b1, b2, eps := float32(a.Beta1), float32(a.Beta2), float32(a.Eps)
	parallelFor(len(params), func(i int) {
		p, m, v := params[i], a.m[i], a.v[i]
		for j, g := range p.G {
			m[j] = m[j]*b1 + (1-b1)*g
			v[j] = v[j]*b2 + (1-b2)*g*g
			denom := float32(math.Sqrt(float64(v[j])))/sqrtBC2 + eps
			p.W[j] -= stepSize * m[j] / denom
		}
	})
}

// workers is how many goroutines share a layer's work.
var workers = runtime.GOMAXPROCS(0)

// parallelFor runs f(0..n-1) on up to `workers` goroutines.
func parallelFor(n int, f func(i int)) { parallelWorkers(n, func(_, i int) { f(i) }) }

// parallelWorkers runs f(worker, 0..n-1) on up to `workers` goroutines;
// worker numbers are below `workers`, so f may use per-worker buffers.
func parallelWorkers(n int, f func(worker, i int)) {
	w := min(workers, n)
	if w <= 1 {
		for i := 0; i < n; i++ {
			f(0, i)
		}
		return
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	next := 0
	for g := 0; g < w; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				if i >= n {
					return
				}
				f(g, i)
			}
		}(g)
	}
	wg.Wait()
}

// parallelStatic is parallelWorkers with a fixed assignment (worker g takes
// g, g+w, g+2w, ...), so per-worker partial sums, and so results, do not
// depend on timing.
func parallelStatic(n int, f func(worker, i int)) {
	w := min(workers, n)
	if w <= 1 {
		for i := 0; i < n; i++ {
			f(0, i)
		}
		return
	}
	var wg sync.WaitGroup
	for g := 0; g < w; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := g; i < n; i += w {
				f(g, i)
			}
		}(g)
	}
	wg.Wait()
}

// dropout zeroes inputs with probability p in training and scales the rest
// by 1/(1-p), like torch.nn.Dropout.
type dropout struct {
	p    float32
	size int
	y    []float32
	mask []float32
	rng  *rand.Rand
}

func newDropout(size, maxBatch int, p float64, seed uint64) *dropout {
	return &dropout{p: float32(p), size: size, y: make([]float32, size*maxBatch), mask: make([]float32, size*maxBatch), rng: rand.New(rand.NewPCG(seed, 1))}
}

func (d *dropout) forward(x []float32, n int, train bool) []float32 {
	if !train || d.p == 0 {
		return x
	}
	scale := 1 / (1 - d.p)
	y, mask := d.y[:n*d.size], d.mask[:n*d.size]
	for i := range y {
		if d.rng.Float32() < d.p {
			mask[i] = 0
		} else {
			mask[i] = scale
		}
		y[i] = x[i] * mask[i]
	}
	return y
}

func (d *dropout) backward(dy []float32, n int) []float32 {
	if d.p == 0 {
		return dy
	}
	mask := d.mask[:n*d.size]
	for i := range mask {
		dy[i] *= mask[i]
	}
	return dy
}

// flatten only reshapes, which a flat buffer does not need; it also stands
// in for layers fused into their predecessor.
type flatten struct{}

func (flatten) forward(x []float32, n int, train bool) []float32 { return x }
func (flatten) backward(dy []float32, n int) []float32           { return dy }
