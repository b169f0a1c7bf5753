// Package model is the pneumonia CNN: its architecture as data ([Spec],
// encrypted at rest like the seed's network.py), a network with PyTorch's
// semantics built from a spec and a state dict ([Net]), training with Adam
// and cross-entropy ([Train]), inference ([Predict]) and evaluation on
// labelled images ([Evaluate]: accuracy and mean cross-entropy).
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
	"unicode"
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
	// One byte past the bound tells a long spec from a cut-off one.
	lr := &io.LimitedReader{R: r, N: maxSpecBytes + 1}
	dec := json.NewDecoder(lr)
	dec.DisallowUnknownFields()
	var s Spec
	if err := dec.Decode(&s); err != nil {
		if lr.N == 0 {
			return nil, fmt.Errorf("model spec: larger than %d bytes", maxSpecBytes)
		}
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

// Bounds on what a spec may ask for. A spec arrives inside a job, so a
// hostile or mistaken one must fail at load, not when the net allocates.
const (
	maxDim         = 1 << 24 // output channels or features of one layer
	maxLayers      = 1024
	maxKernel      = 64      // conv2d and maxpool2d kernels, conv2d padding
	maxInputValues = 1 << 26 // C·H·W of one input image
	maxValues      = 1 << 28 // one layer's output, or a conv's im2col matrix, for one image
	maxParams      = 1 << 28 // learnable values of the whole net (1 GiB as float32)
)

// maxNameBytes bounds spec and layer names: they end up in logs, messages
// and state-dict keys, where a newline could forge a line.
const maxNameBytes = 128

func printable(s string) bool {
	if len(s) > maxNameBytes {
		return false
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

// usedFields are the Layer fields each op reads besides op and name; a
// field set on an op that ignores it would make the net differ silently
// from the PyTorch module the spec describes.
var usedFields = map[string]map[string]bool{
	"conv2d":      {"out": true, "kernel": true, "stride": true, "padding": true},
	"batchnorm2d": {"eps": true, "momentum": true},
	"relu":        {},
	"maxpool2d":   {"kernel": true, "stride": true},
	"flatten":     {},
	"linear":      {"out": true},
	"dropout":     {"p": true},
}

func (l Layer) setFields() []string {
	var f []string
	for _, c := range []struct {
		name string
		set  bool
	}{{"out", l.Out != 0}, {"kernel", l.Kernel != 0}, {"stride", l.Stride != 0}, {"padding", l.Padding != 0},
		{"eps", l.Eps != 0}, {"momentum", l.Momentum != 0}, {"p", l.P != 0}} {
		if c.set {
			f = append(f, c.name)
		}
	}
	return f
}

// Shapes checks the spec and returns the activation shape after each layer
// (without the batch dimension). It checks the whole chain: every kernel
// fits its (padded) input, every output has at least one value, linear
// layers follow a flatten, and sizes and parameter counts stay bounded.
func (s *Spec) Shapes() ([][]int, error) {
	if len(s.Input) != 3 {
		return nil, fmt.Errorf("model spec: input must be [channels, height, width], got %v", s.Input)
	}
	for _, d := range s.Input {
		if d <= 0 || d > 1<<16 {
			return nil, fmt.Errorf("model spec: bad input size %v", s.Input)
		}
	}
	if s.Input[0]*s.Input[1]*s.Input[2] > maxInputValues {
		return nil, fmt.Errorf("model spec: input %v has more than %d values", s.Input, maxInputValues)
	}
	if !printable(s.Name) {
		return nil, fmt.Errorf("model spec: name %q must be at most %d printable characters", s.Name, maxNameBytes)
	}
	if len(s.Layers) == 0 {
		return nil, errors.New("model spec: no layers")
	}
	if len(s.Layers) > maxLayers {
		return nil, fmt.Errorf("model spec: %d layers (at most %d)", len(s.Layers), maxLayers)
	}
	shape := append([]int{}, s.Input...)
	names := map[string]bool{}
	var out [][]int
	params := 0
	addParams := func(where string, n int) error {
		if n > maxParams-params {
			return fmt.Errorf("%s: the net would have more than %d parameters", where, maxParams)
		}
		params += n
		return nil
	}
	for i, l := range s.Layers {
		where := fmt.Sprintf("model spec: layer %d (%s)", i, l.Op)
		if l.Name != "" {
			where = fmt.Sprintf("model spec: layer %d (%s %q)", i, l.Op, l.Name)
			if names[l.Name] {
				return nil, fmt.Errorf("%s: name used twice", where)
			}
			names[l.Name] = true
		}
		if used, ok := usedFields[l.Op]; ok {
			for _, f := range l.setFields() {
				if !used[f] {
					return nil, fmt.Errorf("%s: %s does not apply to %s", where, f, l.Op)
				}
			}
		}
		needName := func() error {
			if l.Name == "" || strings.ContainsAny(l.Name, ". ") || !printable(l.Name) {
				return fmt.Errorf("%s: needs a name without dots or spaces, of printable characters (it prefixes the state-dict keys)", where)
			}
			return nil
		}
		switch l.Op {
		case "conv2d":
			if err := needName(); err != nil {
				return nil, err
			}
			if len(shape) != 3 {
				return nil, fmt.Errorf("%s: input %v is not [C, H, W]", where, shape)
			}
			stride := l.Stride
			if stride == 0 {
				stride = 1
			}
			if l.Out <= 0 || l.Out > maxDim || l.Kernel <= 0 || l.Kernel > maxKernel || stride <= 0 || stride > 1<<16 || l.Padding < 0 || l.Padding > maxKernel {
				return nil, fmt.Errorf("%s: bad out/kernel/stride/padding (out 1..%d, kernel 1..%d, padding 0..%d)", where, maxDim, maxKernel, maxKernel)
			}
			ph, pw := shape[1]+2*l.Padding, shape[2]+2*l.Padding
			if l.Kernel > ph || l.Kernel > pw {
				return nil, fmt.Errorf("%s: kernel %d larger than its %dx%d input (padded %dx%d)", where, l.Kernel, shape[1], shape[2], ph, pw)
			}
			h, w := (ph-l.Kernel)/stride+1, (pw-l.Kernel)/stride+1
			if cols := shape[0] * l.Kernel * l.Kernel; cols > maxValues/(h*w) {
				return nil, fmt.Errorf("%s: its %d×%d patches of %d channels would take more than %d values per image", where, h, w, shape[0], maxValues)
			}
			if h*w > maxValues/l.Out {
				return nil, fmt.Errorf("%s: output %dx%dx%d has more than %d values", where, l.Out, h, w, maxValues)
			}
			if shape[0]*l.Kernel*l.Kernel > maxParams/l.Out {
				return nil, fmt.Errorf("%s: more than %d weights", where, maxParams)
			}
			if err := addParams(where, l.Out*shape[0]*l.Kernel*l.Kernel+l.Out); err != nil {
				return nil, err
			}
			shape = []int{l.Out, h, w}
		case "batchnorm2d":
			if err := needName(); err != nil {
				return nil, err
			}
			if len(shape) != 3 {
				return nil, fmt.Errorf("%s: input %v is not [C, H, W]", where, shape)
			}
			if !(l.Eps >= 0 && l.Eps < 1) || !(l.Momentum >= 0 && l.Momentum <= 1) {
				return nil, fmt.Errorf("%s: eps must be in [0, 1) and momentum in [0, 1] (0: PyTorch's default)", where)
			}
			if err := addParams(where, 2*shape[0]); err != nil {
				return nil, err
			}
		case "relu", "dropout":
			if l.Op == "dropout" && !(l.P >= 0 && l.P < 1) {
				return nil, fmt.Errorf("%s: p must be in [0, 1)", where)
			}
		case "maxpool2d":
			if len(shape) != 3 {
				return nil, fmt.Errorf("%s: input %v is not [C, H, W]", where, shape)
			}
			stride := l.Stride
			if stride == 0 {
				stride = l.Kernel
			}
			if l.Kernel <= 0 || l.Kernel > maxKernel || stride <= 0 || stride > 1<<16 {
				return nil, fmt.Errorf("%s: needs a kernel of 1..%d and a positive stride", where, maxKernel)
			}
			if l.Kernel > shape[1] || l.Kernel > shape[2] {
				return nil, fmt.Errorf("%s: kernel %d larger than its %dx%d input", where, l.Kernel, shape[1], shape[2])
			}
			h, w := (shape[1]-l.Kernel)/stride+1, (shape[2]-l.Kernel)/stride+1
			shape = []int{shape[0], h, w}
		case "flatten":
			shape = []int{shapeSize(shape)}
		case "linear":
			if err := needName(); err != nil {
				return nil, err
			}
			if len(shape) != 1 {
				return nil, fmt.Errorf("%s: input has shape %v; flatten first", where, shape)
			}
			if l.Out <= 0 || l.Out > maxDim {
				return nil, fmt.Errorf("%s: out must be 1..%d", where, maxDim)
			}
			if shape[0] > maxParams/l.Out {
				return nil, fmt.Errorf("%s: %d×%d weights (at most %d)", where, l.Out, shape[0], maxParams)
			}
			if err := addParams(where, l.Out*shape[0]+l.Out); err != nil {
				return nil, err
			}
			shape = []int{l.Out}
		default:
			return nil, fmt.Errorf("%s: unknown op (have conv2d, batchnorm2d, relu, maxpool2d, flatten, linear, dropout)", where)
		}
		out = append(out, shape)
	}
	if len(shape) != 1 {
		return nil, fmt.Errorf("model spec: output has shape %v, want [classes]; end with flatten and linear", shape)
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
