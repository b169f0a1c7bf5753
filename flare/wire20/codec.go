package wire20

import (
	"errors"
	"fmt"
	"math/big"
	"strconv"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/persistor/pickle"
)

// MaxPickleBytes bounds one pickle from the wire (NVFlare allows messages up
// to 2 GiB; a model of 1 GiB is far beyond this job's 3 MB).
const MaxPickleBytes = 1 << 30

var (
	globalShareable = pickle.Global{Module: "nvflare.apis.shareable", Name: "Shareable"}
	globalFLContext = pickle.Global{Module: "nvflare.apis.fl_context", Name: "FLContext"}
	globalGetLogger = pickle.Global{Module: "logging", Name: "getLogger"}
	globalNdarray   = pickle.Global{Module: "numpy", Name: "ndarray"}
	globalDtype     = pickle.Global{Module: "numpy", Name: "dtype"}
	globalRecons    = pickle.Global{Module: "numpy.core.multiarray", Name: "_reconstruct"}
	globalRecons2   = pickle.Global{Module: "numpy._core.multiarray", Name: "_reconstruct"}
	globalScalar    = pickle.Global{Module: "numpy.core.multiarray", Name: "scalar"}
	globalScalar2   = pickle.Global{Module: "numpy._core.multiarray", Name: "scalar"}
)

// wireUnpickler allows exactly what NVFlare 2.0 puts on the wire.
func wireUnpickler() *pickle.Unpickler {
	return &pickle.Unpickler{
		MaxBytes: MaxPickleBytes,
		Allowed: map[pickle.Global]any{
			globalShareable: newClass(func() any { return &dictObject{class: globalShareable} }),
			globalFLContext: newClass(func() any { return &dictObject{class: globalFLContext} }),
			globalGetLogger: pickle.Func(func(args ...any) (any, error) {
				if len(args) != 1 {
					return nil, errors.New("logging.getLogger takes one argument")
				}
				name, _ := args[0].(string)
				return loggerRef{name}, nil
			}),
			globalNdarray: ndarrayClass{},
			globalDtype:   pickle.Func(newDtype),
			globalRecons:  pickle.Func(reconstruct),
			globalRecons2: pickle.Func(reconstruct),
			globalScalar:  pickle.Func(npScalar),
			globalScalar2: pickle.Func(npScalar),
		},
	}
}

// dictObject stands for an instance of an allowed class: a dict subclass
// (Shareable) filled by SETITEMS, or an object (FLContext) filled by BUILD.
type dictObject struct {
	class pickle.Global
	items pickle.GoDict
	state any
}

func (o *dictObject) Set(k, v any)               { o.items.Set(k, v) }
func (o *dictObject) PySetState(state any) error { o.state = state; return nil }

type classFunc func() any

func newClass(f func() any) classFunc { return f }

func (c classFunc) PyNew(args ...any) (any, error) {
	if len(args) != 0 {
		return nil, errors.New("unexpected constructor arguments")
	}
	return c(), nil
}

type loggerRef struct{ name string }

type ndarrayClass struct{}

// DecodeShareable reads Shareable.to_bytes() / pickle.dumps(Shareable).
func DecodeShareable(data []byte) (*flare.Shareable, error) {
	v, _, err := wireUnpickler().Unpickle(data)
	if err != nil {
		return nil, fmt.Errorf("decoding Shareable: %w", err)
	}
	obj, ok := v.(*dictObject)
	if !ok || obj.class != globalShareable {
		return nil, fmt.Errorf("decoding Shareable: top level is %s, not a Shareable", pickle.TypeName(v))
	}
	s := &flare.Shareable{Headers: &pickle.Dict{}}
	for _, e := range obj.items {
		key, ok := e.Key.(string)
		if !ok {
			return nil, fmt.Errorf("decoding Shareable: a key is a %s, not a string", pickle.TypeName(e.Key))
		}
		switch key {
		case "__headers__":
			h, err := pickle.Convert(e.Value)
			if err != nil {
				return nil, fmt.Errorf("decoding Shareable headers: %w", err)
			}
			d, ok := h.(*pickle.Dict)
			if !ok {
				return nil, fmt.Errorf("decoding Shareable: __headers__ is a %s", pickle.TypeName(h))
			}
			s.Headers = d
		case "DXO":
			d, err := decodeDXO(e.Value)
			if err != nil {
				return nil, fmt.Errorf("decoding Shareable: %w", err)
			}
			s.DXO = d
		default:
			v, err := pickle.Convert(e.Value)
			if err != nil {
				return nil, fmt.Errorf("decoding Shareable entry %q: %w", key, err)
			}
			s.Extra = append(s.Extra, pickle.Item{Key: key, Value: v})
		}
	}
	return s, nil
}

func decodeDXO(v any) (*flare.DXO, error) {
	raw, ok := v.(*pickle.GoDict)
	if !ok {
		return nil, fmt.Errorf("DXO is a %T, not a dict", v)
	}
	d := &flare.DXO{Meta: &pickle.Dict{}}
	for _, e := range *raw {
		switch e.Key {
		case "kind":
			k, ok := e.Value.(string)
			if !ok {
				return nil, errors.New("DXO kind is not a string")
			}
			d.Kind = k
		case "meta":
			m, err := pickle.Convert(e.Value)
			if err != nil {
				return nil, fmt.Errorf("DXO meta: %w", err)
			}
			if m == nil { // meta=None, as the pneumonia server sends it
				continue
			}
			md, ok := m.(*pickle.Dict)
			if !ok {
				return nil, fmt.Errorf("DXO meta is a %s", pickle.TypeName(m))
			}
			d.Meta = md
		case "data":
			data, ok := e.Value.(*pickle.GoDict)
			if !ok {
				return nil, fmt.Errorf("DXO data is a %T, not a dict", e.Value)
			}
			for _, a := range *data {
				name, ok := a.Key.(string)
				if !ok {
					return nil, fmt.Errorf("DXO data: a key is a %s, not a string", pickle.TypeName(a.Key))
				}
				arr, ok := a.Value.(*ndarray)
				if !ok {
					// A metric: a plain number (or string, bool).
					v, err := pickle.Convert(a.Value)
					if err != nil {
						return nil, fmt.Errorf("DXO data %q: %w", name, err)
					}
					switch v.(type) {
					case float64, int64, bool, string:
					default:
						return nil, fmt.Errorf("DXO data %q is a %s, not a numpy array or a number", name, pickle.TypeName(v))
					}
					d.Values = append(d.Values, pickle.Item{Key: name, Value: v})
					continue
				}
				t, err := arr.tensor()
				if err != nil {
					return nil, fmt.Errorf("DXO data %q: %w", name, err)
				}
				d.Data = append(d.Data, flare.NamedArray{Name: name, Array: t})
			}
		default:
			return nil, fmt.Errorf("DXO has an unexpected key %s", describeKey(e.Key))
		}
	}
	if d.Kind == "" {
		return nil, errors.New("DXO has no kind")
	}
	return d, nil
}

// EncodeShareable writes s as a pickle that Python's pickle.loads turns
// into an nvflare.apis.shareable.Shareable holding numpy arrays.
func EncodeShareable(s *flare.Shareable) ([]byte, error) {
	obj := &pickle.Object{Class: globalShareable, Args: pickle.Tuple{}}
	headers := &pickle.Dict{}
	if s.Headers != nil {
		headers.Items = append(headers.Items, s.Headers.Items...)
	}
	if _, ok := headers.Get(flare.HeaderContentType); !ok && s.DXO != nil {
		// As DXO.to_shareable does; NVFlare's aggregator rejects a DXO without it.
		headers.Set(flare.HeaderContentType, "DXO")
	}
	obj.Items = append(obj.Items, pickle.Item{Key: "__headers__", Value: headers})
	if s.DXO != nil {
		d, err := encodeDXO(s.DXO)
		if err != nil {
			return nil, err
		}
		obj.Items = append(obj.Items, pickle.Item{Key: "DXO", Value: d})
	}
	obj.Items = append(obj.Items, s.Extra...)
	return marshal3(obj)
}

func marshal3(v any) ([]byte, error) {
	var b bytesBuffer
	e := pickle.NewEncoder(&b)
	e.Protocol = 3
	if err := e.Encode(v); err != nil {
		return nil, err
	}
	return b.b, nil
}

type bytesBuffer struct{ b []byte }

func (b *bytesBuffer) Write(p []byte) (int, error) { b.b = append(b.b, p...); return len(p), nil }

func encodeDXO(d *flare.DXO) (*pickle.Dict, error) {
	data := &pickle.Dict{}
	for _, a := range d.Data {
		v, err := ndarrayValue(a.Array)
		if err != nil {
			return nil, fmt.Errorf("DXO data %q: %w", a.Name, err)
		}
		data.Items = append(data.Items, pickle.Item{Key: a.Name, Value: v})
	}
	for _, v := range d.Values {
		switch v.Value.(type) {
		case float64, int64, bool, string:
		default:
			return nil, fmt.Errorf("DXO data %v is a %T, not a number", v.Key, v.Value)
		}
		data.Items = append(data.Items, v)
	}
	meta := d.Meta
	if meta == nil {
		meta = &pickle.Dict{}
	}
	return &pickle.Dict{Items: []pickle.Item{{Key: "kind", Value: d.Kind}, {Key: "data", Value: data}, {Key: "meta", Value: meta}}}, nil
}

// DecodeFLContext reads pickle.dumps(FLContext) as NVFlare's
// make_context_data writes it.
func DecodeFLContext(data []byte) (*flare.FLContext, error) {
	v, _, err := wireUnpickler().Unpickle(data)
	if err != nil {
		return nil, fmt.Errorf("decoding FLContext: %w", err)
	}
	obj, ok := v.(*dictObject)
	if !ok || obj.class != globalFLContext {
		return nil, fmt.Errorf("decoding FLContext: top level is %s, not an FLContext", pickle.TypeName(v))
	}
	st, ok := obj.state.(*pickle.GoDict)
	if !ok {
		return nil, errors.New("decoding FLContext: no state")
	}
	c := &flare.FLContext{}
	for _, e := range *st {
		switch e.Key {
		case "logger":
			if l, ok := e.Value.(loggerRef); ok {
				c.Logger = l.name
			}
		case "props":
			props, ok := e.Value.(*pickle.GoDict)
			if !ok {
				return nil, errors.New("decoding FLContext: props is not a dict")
			}
			for _, p := range *props {
				name, _ := p.Key.(string)
				entry, err := pickle.Convert(p.Value)
				if err != nil {
					return nil, fmt.Errorf("decoding FLContext prop %q: %w", name, err)
				}
				ed, ok := entry.(*pickle.Dict)
				if !ok {
					return nil, fmt.Errorf("decoding FLContext prop %q: not a {value, mask} dict", name)
				}
				val, _ := ed.Get("value")
				mask, _ := ed.Get("mask")
				m, _ := mask.(int64)
				c.Props = append(c.Props, flare.Prop{Name: name, Value: val, Mask: m})
			}
		}
	}
	return c, nil
}

// EncodeFLContext writes c as NVFlare's make_context_data does.
func EncodeFLContext(c *flare.FLContext) ([]byte, error) {
	props := &pickle.Dict{}
	for _, p := range c.Props {
		props.Items = append(props.Items, pickle.Item{Key: p.Name, Value: &pickle.Dict{Items: []pickle.Item{
			{Key: "value", Value: p.Value}, {Key: "mask", Value: p.Mask}}}})
	}
	logger := c.Logger
	if logger == "" {
		logger = "FLContext"
	}
	state := &pickle.Dict{Items: []pickle.Item{
		{Key: "model", Value: nil},
		{Key: "props", Value: props},
		{Key: "logger", Value: &pickle.Reduce{Func: globalGetLogger, Args: pickle.Tuple{logger}}},
	}}
	return marshal3(&pickle.Object{Class: globalFLContext, Args: pickle.Tuple{}, State: state})
}

// describeKey names a dict key in an error without printing all of it: a
// key from the wire may be a tuple nested without end.
func describeKey(k any) string {
	if s, ok := k.(string); ok {
		return strconv.Quote(flare.LogSafe(s))
	}
	return "of type " + pickle.TypeName(k)
}

func toInt64(v any) (int64, bool) {
	switch n := v.(type) {
	case int:
		return int64(n), true
	case int64:
		return n, true
	case *big.Int:
		if n.IsInt64() {
			return n.Int64(), true
		}
	}
	return 0, false
}
