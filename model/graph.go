//go:build !nogorgonia

package model

import (
	"fmt"
	"hash"
	"hash/fnv"

	"github.com/chewxy/hm"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"

	_ "go4.org/unsafe/assume-no-moving-gc" // Gorgonia panics at start-up on Go ≥ 1.26 without its latest version
)

// Graph is a Net as a Gorgonia expression graph, the form training and
// inference run in. Each layer of the spec is one node whose op is a
// custom Gorgonia op calling the layer's kernels (Gorgonia's own ops are
// ~5x slower here, its SoftMax/LogSumExp are numerically unstable and its
// BatchNorm is per activation, not per channel); the loss is a custom
// stable cross-entropy op; gradients come from gorgonia.Grad through each
// op's SymDiff, and the backward ops accumulate parameter gradients into the
// net's Param32s for the Adam solver.
type Graph struct {
	net   *Net
	n     int
	g     *G.ExprGraph
	x     *G.Node
	out   *G.Node // logits
	loss  *G.Node
	vm    G.VM
	train bool
	ce    *crossEntropyOp
}

// NewGraph builds the graph for batches of exactly n images; with train it
// also builds the loss and the backward pass.
func (net *Net) NewGraph(n int, train bool) (*Graph, error) {
	if n <= 0 || n > net.MaxBatch {
		return nil, fmt.Errorf("batch of %d images; this net takes 1 to %d", n, net.MaxBatch)
	}
	shapes, err := net.Spec.Shapes()
	if err != nil {
		return nil, err
	}
	gr := &Graph{net: net, n: n, g: G.NewGraph(), train: train}
	// The ops get a mode of their own, not a pointer into gr: Gorgonia's
	// tape machine has a finalizer, and a cycle through an object with a
	// finalizer is never collected (machine → program → ops → gr → machine),
	// so every graph and its net would stay in memory for good
	// (TestGraphsAreFreed).
	mode := new(bool)
	*mode = train
	in := append([]int{n}, net.Spec.Input...)
	gr.x = G.NewTensor(gr.g, tensor.Float32, len(in), G.WithShape(in...), G.WithName("x"))
	h := gr.x
	first := true
	for i, l := range net.layers {
		if _, ok := l.(flatten); ok && net.Spec.Layers[i].Op != "flatten" {
			continue // a ReLU fused into the layer before
		}
		out := append([]int{n}, shapes[i]...)
		op := &layerOp{l: l, name: fmt.Sprintf("%s%d", net.Spec.Layers[i].Op, i), in: h.Shape().Clone(), out: out,
			train: mode, n: n, first: first}
		if h, err = G.ApplyOp(op, h); err != nil {
			return nil, fmt.Errorf("building layer %d: %w", i, err)
		}
		first = false
	}
	gr.out = h
	if !train {
		gr.vm = G.NewTapeMachine(gr.g)
		return gr, nil
	}
	classes := shapes[len(shapes)-1][0]
	gr.ce = &crossEntropyOp{n: n, classes: classes, grad: make([]float32, n*classes)}
	if gr.loss, err = G.ApplyOp(gr.ce, h); err != nil {
		return nil, err
	}
	// The gradient flowing into the loss is this graph's own constant 1:
	// gorgonia.Grad would add Gorgonia's package-level constant to the
	// graph, and that node keeps a reference to every graph ever
	// differentiated with it (its derivOf list only grows), so each graph,
	// with its net's buffers, would stay in memory for good (120 MB a
	// graph for PneumoniaModel at batch 4; TestGraphsAreFreed).
	one := gr.g.AddNode(G.NewConstant(float32(1), G.WithName("dloss")))
	if _, err = G.Backpropagate(G.Nodes{gr.loss}, G.Nodes{one}, G.Nodes{gr.x}); err != nil {
		return nil, fmt.Errorf("differentiating the graph: %w", err)
	}
	gr.vm = G.NewTapeMachine(gr.g)
	return gr, nil
}

// Run runs the graph on x (n images). In a training graph labels are the
// classes and the parameter gradients are accumulated (zero them first);
// it returns the logits (owned by the net) and the loss (0 when not
// training).
func (gr *Graph) Run(x []float32, labels []int) ([]float32, float64, error) {
	if len(x) != gr.n*gr.net.inSize {
		return nil, 0, fmt.Errorf("input has %d values, want %d", len(x), gr.n*gr.net.inSize)
	}
	if gr.train {
		if len(labels) != gr.n {
			return nil, 0, fmt.Errorf("%d labels for %d images", len(labels), gr.n)
		}
		gr.ce.labels = labels
	}
	xt := tensor.New(tensor.WithShape(gr.x.Shape().Clone()...), tensor.WithBacking(x))
	if err := G.Let(gr.x, xt); err != nil {
		return nil, 0, err
	}
	defer gr.vm.Reset()
	if err := gr.vm.RunAll(); err != nil {
		return nil, 0, err
	}
	logits := gr.out.Value().Data().([]float32)
	return logits, gr.ce.lossValue(), nil
}

// Close releases the machine.
func (gr *Graph) Close() error { return gr.vm.Close() }

// layerOp runs one layer's forward pass.
type layerOp struct {
	l       layer
	name    string
	in, out tensor.Shape
	train   *bool
	n       int
	first   bool // the input is the data: no gradient to compute for it
}

func f32Type(dims int) G.TensorType { return G.TensorType{Dims: dims, Of: tensor.Float32} }

func (op *layerOp) Arity() int { return 1 }
func (op *layerOp) Type() hm.Type {
	return hm.NewFnType(f32Type(len(op.in)), f32Type(len(op.out)))
}
func (op *layerOp) InferShape(...G.DimSizer) (tensor.Shape, error) { return op.out.Clone(), nil }
func (op *layerOp) Do(v ...G.Value) (G.Value, error) {
	x := v[0].Data().([]float32)
	y := op.l.forward(x, op.n, *op.train)
	return tensor.New(tensor.WithShape(op.out.Clone()...), tensor.WithBacking(y)), nil
}
func (op *layerOp) ReturnsPtr() bool      { return true }
func (op *layerOp) CallsExtern() bool     { return false }
func (op *layerOp) OverwritesInput() int  { return -1 }
func (op *layerOp) WriteHash(h hash.Hash) { fmt.Fprintf(h, "flarego.%s%p", op.name, op) }
func (op *layerOp) Hashcode() uint32      { return hashOf(op) }
func (op *layerOp) String() string        { return op.name }
func (op *layerOp) DiffWRT(int) []bool    { return []bool{true} }
func (op *layerOp) SymDiff(inputs G.Nodes, output, grad *G.Node) (G.Nodes, error) {
	d, err := G.ApplyOp(&layerGradOp{op: op}, inputs[0], output, grad)
	if err != nil {
		return nil, err
	}
	return G.Nodes{d}, nil
}

func hashOf(op G.Op) uint32 {
	h := fnv.New32a()
	op.WriteHash(h)
	return h.Sum32()
}

// layerGradOp runs one layer's backward pass: it takes (x, y, dL/dy),
// accumulates the layer's parameter gradients and returns dL/dx.
type layerGradOp struct {
	op   *layerOp
	zero *tensor.Dense // dL/dx of the data input, never used
}

func (g *layerGradOp) Arity() int { return 3 }
func (g *layerGradOp) Type() hm.Type {
	in, out := f32Type(len(g.op.in)), f32Type(len(g.op.out))
	return hm.NewFnType(in, out, out, in)
}
func (g *layerGradOp) InferShape(...G.DimSizer) (tensor.Shape, error) { return g.op.in.Clone(), nil }
func (g *layerGradOp) Do(v ...G.Value) (G.Value, error) {
	dy := v[2].Data().([]float32)
	dx := g.op.l.backward(dy, g.op.n)
	if dx == nil {
		if g.zero == nil {
			g.zero = tensor.New(tensor.WithShape(g.op.in.Clone()...), tensor.Of(tensor.Float32))
		}
		return g.zero, nil
	}
	return tensor.New(tensor.WithShape(g.op.in.Clone()...), tensor.WithBacking(dx)), nil
}
func (g *layerGradOp) ReturnsPtr() bool      { return true }
func (g *layerGradOp) CallsExtern() bool     { return false }
func (g *layerGradOp) OverwritesInput() int  { return -1 }
func (g *layerGradOp) WriteHash(h hash.Hash) { fmt.Fprintf(h, "flarego.grad.%s%p", g.op.name, g.op) }
func (g *layerGradOp) Hashcode() uint32      { return hashOf(g) }
func (g *layerGradOp) String() string        { return "∂" + g.op.name }

// crossEntropyOp is PyTorch's CrossEntropyLoss (mean), computed with a
// stable log-softmax; it keeps dL/dlogits for its gradient op.
type crossEntropyOp struct {
	n, classes int
	labels     []int
	grad       []float32
	loss       float64
}

func (c *crossEntropyOp) lossValue() float64 {
	if c == nil {
		return 0
	}
	return c.loss
}

func (c *crossEntropyOp) Arity() int { return 1 }
func (c *crossEntropyOp) Type() hm.Type {
	return hm.NewFnType(f32Type(2), tensor.Float32)
}
func (c *crossEntropyOp) InferShape(...G.DimSizer) (tensor.Shape, error) {
	return tensor.ScalarShape(), nil
}
func (c *crossEntropyOp) Do(v ...G.Value) (G.Value, error) {
	loss, err := CrossEntropy(v[0].Data().([]float32), c.labels, c.classes, c.grad)
	if err != nil {
		return nil, err
	}
	c.loss = loss
	return G.NewF32(float32(loss)), nil
}
func (c *crossEntropyOp) ReturnsPtr() bool      { return false }
func (c *crossEntropyOp) CallsExtern() bool     { return false }
func (c *crossEntropyOp) OverwritesInput() int  { return -1 }
func (c *crossEntropyOp) WriteHash(h hash.Hash) { fmt.Fprintf(h, "flarego.crossentropy%p", c) }
func (c *crossEntropyOp) Hashcode() uint32      { return hashOf(c) }
func (c *crossEntropyOp) String() string        { return "CrossEntropy" }
func (c *crossEntropyOp) DiffWRT(int) []bool    { return []bool{true} }
func (c *crossEntropyOp) SymDiff(inputs G.Nodes, output, grad *G.Node) (G.Nodes, error) {
	d, err := G.ApplyOp(&crossEntropyGradOp{c}, inputs[0], grad)
	if err != nil {
		return nil, err
	}
	return G.Nodes{d}, nil
}

// crossEntropyGradOp returns dL/dlogits scaled by the incoming gradient.
type crossEntropyGradOp struct{ c *crossEntropyOp }

func (g *crossEntropyGradOp) Arity() int { return 2 }
func (g *crossEntropyGradOp) Type() hm.Type {
	return hm.NewFnType(f32Type(2), tensor.Float32, f32Type(2))
}
func (g *crossEntropyGradOp) InferShape(...G.DimSizer) (tensor.Shape, error) {
	return tensor.Shape{g.c.n, g.c.classes}, nil
}
func (g *crossEntropyGradOp) Do(v ...G.Value) (G.Value, error) {
	scale := float32(1)
	if s, ok := v[1].Data().(float32); ok {
		scale = s
	}
	if scale != 1 {
		for i := range g.c.grad {
			g.c.grad[i] *= scale
		}
	}
	return tensor.New(tensor.WithShape(g.c.n, g.c.classes), tensor.WithBacking(g.c.grad)), nil
}
func (g *crossEntropyGradOp) ReturnsPtr() bool     { return true }
func (g *crossEntropyGradOp) CallsExtern() bool    { return false }
func (g *crossEntropyGradOp) OverwritesInput() int { return -1 }
func (g *crossEntropyGradOp) WriteHash(h hash.Hash) {
	fmt.Fprintf(h, "flarego.crossentropygrad%p", g.c)
}
func (g *crossEntropyGradOp) Hashcode() uint32 { return hashOf(g) }
func (g *crossEntropyGradOp) String() string   { return "∂CrossEntropy" }
