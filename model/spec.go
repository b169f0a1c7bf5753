// Package model is the pneumonia CNN: its architecture as data ([Spec],
// encrypted at rest like the seed's network.py), a network with PyTorch's
// semantics built from a spec and a state dict ([Net]), training with Adam
// and cross-entropy, and inference.
//
// A spec names its layers as PyTorch's module attributes, so a [Net]'s state
// dict has PyTorch's keys (conv1.weight, bn1.running_mean, fc.bias, ...) and
// weights move between Go and PyTorch's PneumoniaModel unchanged.
package model

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// A Spec describes a feed-forward network: an input shape and layers in order.
type Spec struct {
	Name    string  `json:"name"`
	Input   []int   `json:"input"` // [channels, height, width]
	Classes int     `json:"classes"`
	Layers  []Layer `json:"layers"`
}

// A Layer is one step of a Spec. Op is one of conv2d, batchnorm2d, relu,
// maxpool2d, flatten, linear, dropout. Layers with parameters need a Name,
// which prefixes their state-dict keys; input sizes are inferred.
type Layer struct {
	Op       string  `json:"op"`
	Name     string  `json:"name,omitempty"`
	Out      int     `json:"out,omitempty"`      // conv2d: output channels; linear: output features
	Kernel   int     `json:"kernel,omitempty"`   // conv2d, maxpool2d
	Stride   int     `json:"stride,omitempty"`   // conv2d (default 1), maxpool2d (default kernel)
	Padding  int     `json:"padding,omitempty"`  // conv2d
	Eps      float64 `json:"eps,omitempty"`      // batchnorm2d (default 1e-5)
	Momentum float64 `json:"momentum,omitempty"` // batchnorm2d (default 0.1)
	P        float64 `json:"p,omitempty"`        // dropout probability
}

// PneumoniaSpec returns the seed's PneumoniaModel (network.py).
func PneumoniaSpec() *Spec {
	return &Spec{
		Name: "PneumoniaModel", Input: []int{3, 224, 224}, Classes: 2,
		Layers: []Layer{
			{Op: "conv2d", Name: "conv1", Out: 12, Kernel: 3, Stride: 1, Padding: 1},
			{Op: "batchnorm2d", Name: "bn1"},
			{Op: "relu"},
			{Op: "maxpool2d", Kernel: 2},
			{Op: "conv2d", Name: "conv2", Out: 20, Kernel: 3, Stride: 1, Padding: 1},
			{Op: "relu"},
			{Op: "conv2d", Name: "conv3", Out: 32, Kernel: 3, Stride: 1, Padding: 1},
			{Op: "batchnorm2d", Name: "bn3"},
			{Op: "relu"},
			{Op: "flatten"},
			{Op: "linear", Name: "fc", Out: 2},
		},
	}
}

// maxSpecBytes bounds a spec file; real ones are a few hundred bytes.
const maxSpecBytes = 1 << 20

// ReadSpec decodes and checks a JSON spec.
func ReadSpec(r io.Reader) (*Spec, error) {
	dec := json.NewDecoder(io.LimitReader(r, maxSpecBytes))
	dec.DisallowUnknownFields()
	var s Spec
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("model spec: %w", err)
	}
	if _, err := s.Shapes(); err != nil {
		return nil, err
	}
	return &s, nil
}

// ParseSpec is ReadSpec over bytes.
func ParseSpec(data []byte) (*Spec, error) { return ReadSpec(strings.NewReader(string(data))) }

// Marshal returns the spec as indented JSON.
func (s *Spec) Marshal() ([]byte, error) { return json.MarshalIndent(s, "", "  ") }

// Param is one state-dict entry a spec implies.
type Param struct {
	Name  string
	Shape []int // nil for a 0-dim tensor
	Int64 bool  // num_batches_tracked
}

// maxDim bounds every size in a spec, so that a hostile spec cannot ask for
// absurd allocations.
const maxDim = 1 << 24

// Shapes checks the spec and returns the activation shape after each layer
// (without the batch dimension).
func (s *Spec) Shapes() ([][]int, error) {
	if len(s.Input) != 3 {
		return nil, fmt.Errorf("model spec: input must be [channels, height, width], got %v", s.Input)
	}
	for _, d := range s.Input {
		if d <= 0 || d > 1<<16 {
			return nil, fmt.Errorf("model spec: bad input size %v", s.Input)
		}
	}
	if len(s.Layers) == 0 {
		return nil, errors.New("model spec: no layers")
	}
	shape := append([]int{}, s.Input...)
	names := map[string]bool{}
	var out [][]int
	for i, l := range s.Layers {
		where := fmt.Sprintf("model spec: layer %d (%s)", i, l.Op)
		if l.Name != "" {
			where = fmt.Sprintf("model spec: layer %d (%s %q)", i, l.Op, l.Name)
			if names[l.Name] {
				return nil, fmt.Errorf("%s: name used twice", where)
			}
			names[l.Name] = true
		}
		needName := func() error {
			if l.Name == "" || strings.ContainsAny(l.Name, ". ") {
				return fmt.Errorf("%s: needs a name without dots or spaces (it prefixes the state-dict keys)", where)
			}
			return nil
		}
		switch l.Op {
		case "conv2d":
			if err := needName(); err != nil {
				return nil, err
			}
			if len(shape) != 3 {
				return nil, fmt.Errorf("%s: input is not [C, H, W]", where)
			}
			stride := l.Stride
			if stride == 0 {
				stride = 1
			}
			if l.Out <= 0 || l.Out > maxDim || l.Kernel <= 0 || l.Kernel > 64 || stride <= 0 || l.Padding < 0 || l.Padding > 64 {
				return nil, fmt.Errorf("%s: bad out/kernel/stride/padding", where)
			}
			h := (shape[1]+2*l.Padding-l.Kernel)/stride + 1
			w := (shape[2]+2*l.Padding-l.Kernel)/stride + 1
			if h <= 0 || w <= 0 {
				return nil, fmt.Errorf("%s: kernel larger than its %dx%d input", where, shape[1], shape[2])
			}
			shape = []int{l.Out, h, w}
		case "batchnorm2d":
			if err := needName(); err != nil {
				return nil, err
			}
			if len(shape) != 3 {
				return nil, fmt.Errorf("%s: input is not [C, H, W]", where)
			}
		case "relu", "dropout":
			if l.Op == "dropout" && (l.P < 0 || l.P >= 1) {
				return nil, fmt.Errorf("%s: p must be in [0, 1)", where)
			}
		case "maxpool2d":
			if len(shape) != 3 || l.Kernel <= 0 {
				return nil, fmt.Errorf("%s: needs a kernel and a [C, H, W] input", where)
			}
			stride := l.Stride
			if stride == 0 {
				stride = l.Kernel
			}
			h, w := (shape[1]-l.Kernel)/stride+1, (shape[2]-l.Kernel)/stride+1
			if h <= 0 || w <= 0 {
				return nil, fmt.Errorf("%s: kernel larger than its input", where)
			}
			shape = []int{shape[0], h, w}
		case "flatten":
			n := 1
			for _, d := range shape {
				n *= d
			}
			shape = []int{n}
		case "linear":
			if err := needName(); err != nil {
				return nil, err
			}
			if len(shape) != 1 {
				return nil, fmt.Errorf("%s: input has shape %v; flatten first", where, shape)
			}
			if l.Out <= 0 || l.Out > maxDim || shape[0]*l.Out > 1<<31 {
				return nil, fmt.Errorf("%s: bad size", where)
			}
			shape = []int{l.Out}
		default:
			return nil, fmt.Errorf("%s: unknown op (have conv2d, batchnorm2d, relu, maxpool2d, flatten, linear, dropout)", where)
		}
		out = append(out, shape)
	}
	if len(shape) != 1 {
		return nil, fmt.Errorf("model spec: output has shape %v, want [classes]", shape)
	}
	if s.Classes != 0 && shape[0] != s.Classes {
		return nil, fmt.Errorf("model spec: output has %d values but classes is %d", shape[0], s.Classes)
	}
	return out, nil
}

// Params lists the state-dict entries in PyTorch's order.
func (s *Spec) Params() ([]Param, error) {
	shapes, err := s.Shapes()
	if err != nil {
		return nil, err
	}
	var ps []Param
	in := s.Input
	for i, l := range s.Layers {
		switch l.Op {
		case "conv2d":
			ps = append(ps, Param{l.Name + ".weight", []int{l.Out, in[0], l.Kernel, l.Kernel}, false},
				Param{l.Name + ".bias", []int{l.Out}, false})
		case "batchnorm2d":
			c := in[0]
			ps = append(ps, Param{l.Name + ".weight", []int{c}, false}, Param{l.Name + ".bias", []int{c}, false},
				Param{l.Name + ".running_mean", []int{c}, false}, Param{l.Name + ".running_var", []int{c}, false},
				Param{l.Name + ".num_batches_tracked", nil, true})
		case "linear":
			ps = append(ps, Param{l.Name + ".weight", []int{l.Out, in[0]}, false}, Param{l.Name + ".bias", []int{l.Out}, false})
		}
		in = shapes[i]
	}
	return ps, nil
}
