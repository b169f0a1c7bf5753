//go:build nogorgonia

package model

import "fmt"

// Graph, in a build with the nogorgonia tag (the FCP image's), runs the
// same layer calls as the Gorgonia graph does, in the same order, without
// the graph machine: Forward, then CrossEntropy and Backward. The results
// are the graph's bit for bit (TestGraphMatchesDirectCalls compares the
// two); leaving Gorgonia and its dependencies out makes the binary ≈ 9 MB
// smaller.
type Graph struct {
	net   *Net
	n     int
	train bool
	grad  []float32
}

// NewGraph prepares batches of exactly n images; with train it also runs
// the loss and the backward pass.
func (net *Net) NewGraph(n int, train bool) (*Graph, error) {
	if n <= 0 || n > net.MaxBatch {
		return nil, fmt.Errorf("batch of %d images; this net takes 1 to %d", n, net.MaxBatch)
	}
	gr := &Graph{net: net, n: n, train: train}
	if train {
		gr.grad = make([]float32, n*net.classes)
	}
	return gr, nil
}

// Run runs the net on x (n images). When training, labels are the classes
// and the parameter gradients are accumulated (zero them first); it returns
// the logits (owned by the net) and the loss (0 when not training).
func (gr *Graph) Run(x []float32, labels []int) ([]float32, float64, error) {
	if len(x) != gr.n*gr.net.inSize {
		return nil, 0, fmt.Errorf("input has %d values, want %d", len(x), gr.n*gr.net.inSize)
	}
	if gr.train && len(labels) != gr.n {
		return nil, 0, fmt.Errorf("%d labels for %d images", len(labels), gr.n)
	}
	logits, err := gr.net.Forward(x, gr.n, gr.train)
	if err != nil || !gr.train {
		return logits, 0, err
	}
	loss, err := CrossEntropy(logits, labels, gr.net.classes, gr.grad)
	if err != nil {
		return nil, 0, err
	}
	gr.net.Backward(gr.grad, gr.n)
	return logits, loss, nil
}

// Close releases nothing; it is there for the graph's callers.
func (gr *Graph) Close() error { return nil }
