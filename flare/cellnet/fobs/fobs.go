// Package fobs decodes NVFlare's FOBS payloads (nvflare.fuel.utils.fobs,
// 2.4+): a LOBS container (package lobs) whose main body is msgpack in
// which typed objects are maps {__fobs_type__, __fobs_data__, __fobs_dc__}.
//
// NVFlare's own decoder loads the class a payload names (≤ 2.6: any class,
// so any peer could run code; 2.7 added allowlists). This one builds Go
// values from a fixed allowlist and refuses every other type name, and
// every other decomposer, with an error that names it:
//
//   - nvflare.apis.shareable.Shareable (DictDecomposer) → *flare.Shareable,
//     its "DXO" entry → *flare.DXO
//   - nvflare.apis.fl_context.FLContext (ContextDecomposer) → *flare.FLContext
//   - nvflare.private.admin_defs.Message (DataClassDecomposer) → *Message
//   - nvflare.fuel.utils.fobs.datum.DatumRef → the datum's value
//   - numpy.ndarray (NumpyArrayDecomposer) → *persistor.Tensor, from .npy
//     bytes (2.6 raw, 2.7.0 {"type": "native"}) or, for a reference
//     (2.7.2+ {"type": "ref"}), through [Options.Array]
//   - numpy.float32/float64/int32/int64 → float64 / int64
//   - the enums nvflare.apis.dxo.DataKind and the others in [enums] → their name
//   - tuple → [Tuple], set → [Set] (NVFlare names builtins without a module),
//     collections.OrderedDict → msgpk.Map, datetime.datetime → time.Time
//
// Plain values stay as package msgpk decodes them (maps in order, any key
// type). The body is bounded by msgpk's limits and by the container's own
// size; a reference to a datum that is not there is an error.
//
// [Encode] writes the same types back, arrays inside the payload;
// [EncodeWith] can send them by reference instead, for a download service
// (package download) to serve.
package fobs

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/cellnet/lobs"
	"github.com/flarego/flarego/flare/cellnet/msgpk"
	"github.com/flarego/flarego/flare/npy"
	"github.com/flarego/flarego/persistor"
	"github.com/flarego/flarego/persistor/pickle"
)

// Keys of a typed object.
const (
	keyType       = "__fobs_type__"
	keyData       = "__fobs_data__"
	keyDecomposer = "__fobs_dc__"
)

// Tuple is a Python tuple; Set a Python set (in wire order).
type (
	Tuple []any
	Set   []any
)

// Enum is a Python enum member as Encode writes it: its class and its
// name (nvflare.apis.job_def.JobMetaKey JOB_CLIENTS, a key of a job's
// meta). Decode gives an enum's name alone.
type Enum struct {
	Type, Name string
}

// Message is nvflare.private.admin_defs.Message: a request or reply of the
// admin channel between the server and a site's parent cell.
type Message struct {
	ID      string
	Topic   string
	Body    any
	Headers msgpk.Map
}

// ArrayRef is a numpy array sent by reference (NVFlare 2.7.2+): item Item
// of the batch RefID that the cell FQCN serves on its download service.
type ArrayRef struct {
	Item, FQCN, RefID string
}

// Options say how to resolve what a payload does not carry itself.
type Options struct {
	// Array gets an array sent by reference; nil makes one an error.
	Array func(ArrayRef) (*persistor.Tensor, error)
}

// ErrType is wrapped by the errors of a type or decomposer not allowed.
var ErrType = errors.New("FOBS type not allowed")

// Decode turns a FOBS container into Go values.
func Decode(c *lobs.Container, o Options) (any, error) {
	body, err := msgpk.Unmarshal(c.Main)
	if err != nil {
		return nil, fmt.Errorf("FOBS body: %w", err)
	}
	d := &decoder{c: c, o: o}
	for _, dt := range c.Datums {
		if dt.Marker == lobs.MarkerText && dt.Type == dotNumpyDownload {
			var ref struct {
				FQCN  string `json:"fqcn"`
				RefID string `json:"ref_id"`
			}
			if err := json.Unmarshal(dt.Value, &ref); err != nil {
				return nil, fmt.Errorf("FOBS download datum: %w", err)
			}
			d.fqcn, d.refID = ref.FQCN, ref.RefID
		}
	}
	return d.value(body, 0)
}

// dotNumpyDownload is the datum object type of the {fqcn, ref_id} text
// datum that says where a payload's referenced numpy arrays are served.
const dotNumpyDownload = 3

type decoder struct {
	c           *lobs.Container
	o           Options
	fqcn, refID string
}

// enums are the Enum types whose members travel by name.
var enums = map[string]bool{
	"nvflare.apis.dxo.DataKind":              true,
	"nvflare.apis.job_def.JobMetaKey":        true,
	"nvflare.apis.job_def.RunStatus":         true,
	"nvflare.apis.fl_constant.MachineStatus": true,
}

const maxDepth = msgpk.DefaultLimitsDepth

func (d *decoder) value(v any, depth int) (any, error) {
	if depth > maxDepth {
		return nil, errors.New("FOBS: nested too deep")
	}
	switch x := v.(type) {
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			var err error
			if out[i], err = d.value(e, depth+1); err != nil {
				return nil, err
			}
		}
		return out, nil
	case msgpk.Map:
		if t, ok := x.Get(keyType); ok {
			return d.typed(x, t, depth)
		}
		out := make(msgpk.Map, len(x))
		for i, kv := range x {
			k, err := d.value(kv.Key, depth+1)
			if err != nil {
				return nil, err
			}
			val, err := d.value(kv.Value, depth+1)
			if err != nil {
				return nil, err
			}
			out[i] = msgpk.KV{Key: k, Value: val}
		}
		return out, nil
	}
	return v, nil
}

func (d *decoder) typed(m msgpk.Map, t any, depth int) (any, error) {
	name, _ := t.(string)
	dc := m.String(keyDecomposer)
	raw, _ := m.Get(keyData)
	refuse := func(why string) error {
		return fmt.Errorf("%w: %s (%s)%s", ErrType, flare.LogSafe(name), flare.LogSafe(dc), why)
	}
	want := func(decomposer string) error {
		if dc != "" && dc != decomposer {
			return refuse(", decomposer not allowed for it")
		}
		return nil
	}
	switch {
	case name == "nvflare.apis.shareable.Shareable":
		if err := want("nvflare.fuel.utils.fobs.decomposer.DictDecomposer"); err != nil {
			return nil, err
		}
		data, err := d.value(raw, depth+1)
		if err != nil {
			return nil, err
		}
		return shareable(data)
	case name == "nvflare.apis.fl_context.FLContext":
		if err := want("nvflare.apis.utils.decomposers.flare_decomposers.ContextDecomposer"); err != nil {
			return nil, err
		}
		data, err := d.value(raw, depth+1)
		if err != nil {
			return nil, err
		}
		return flContext(data)
	case name == "nvflare.private.admin_defs.Message":
		if err := want("nvflare.fuel.utils.fobs.decomposer.DataClassDecomposer"); err != nil {
			return nil, err
		}
		data, err := d.value(raw, depth+1)
		if err != nil {
			return nil, err
		}
		return message(data)
	case name == "nvflare.fuel.utils.fobs.datum.DatumRef":
		data, err := d.value(raw, depth+1)
		if err != nil {
			return nil, err
		}
		return d.datumRef(data)
	case name == "numpy.ndarray":
		if err := want("nvflare.app_common.decomposers.numpy_decomposers.NumpyArrayDecomposer"); err != nil {
			return nil, err
		}
		return d.array(raw)
	case name == "numpy.float32" || name == "numpy.float64":
		f, ok := raw.(float64)
		if !ok {
			return nil, refuse(": not a float")
		}
		return f, nil
	case name == "numpy.int32" || name == "numpy.int64":
		i, ok := raw.(int64)
		if !ok {
			return nil, refuse(": not an integer")
		}
		return i, nil
	case enums[name]:
		if err := want("nvflare.fuel.utils.fobs.decomposer.EnumTypeDecomposer"); err != nil {
			return nil, err
		}
		s, ok := raw.(string)
		if !ok {
			return nil, refuse(": member is not a name")
		}
		return s, nil
	case name == "tuple" || name == "set" || name == "builtins.tuple" || name == "builtins.set":
		data, err := d.value(raw, depth+1)
		if err != nil {
			return nil, err
		}
		l, ok := data.([]any)
		if !ok {
			return nil, refuse(": not a list")
		}
		if strings.HasSuffix(name, "set") {
			return Set(l), nil
		}
		return Tuple(l), nil
	case name == "collections.OrderedDict":
		data, err := d.value(raw, depth+1)
		if err != nil {
			return nil, err
		}
		l, ok := data.([]any)
		if !ok {
			return nil, refuse(": not a list of pairs")
		}
		out := make(msgpk.Map, 0, len(l))
		for _, p := range l {
			kv, ok := p.([]any)
			if !ok || len(kv) != 2 {
				return nil, refuse(": not a list of pairs")
			}
			out = append(out, msgpk.KV{Key: kv[0], Value: kv[1]})
		}
		return out, nil
	case name == "datetime.datetime":
		s, ok := raw.(string)
		if !ok {
			return nil, refuse(": not an ISO time")
		}
		for _, layout := range []string{"2006-01-02T15:04:05.999999-07:00", "2006-01-02T15:04:05.999999", "2006-01-02T15:04:05-07:00", "2006-01-02T15:04:05"} {
			if tm, err := time.Parse(layout, s); err == nil {
				return tm, nil
			}
		}
		return nil, refuse(": not an ISO time")
	}
	return nil, refuse("")
}

func (d *decoder) datumRef(data any) (any, error) {
	m, _ := data.(msgpk.Map)
	if dm, ok := m.Get("data"); ok { // DataClassDecomposer wraps vars(obj)
		m, _ = dm.(msgpk.Map)
	}
	id := m.String("datum_id")
	for _, dt := range d.c.Datums {
		if uuidString(dt.ID) == id || string(dt.ID[:]) == id {
			if dt.Marker == lobs.MarkerText {
				return string(dt.Value), nil
			}
			return dt.Value, nil
		}
	}
	return nil, fmt.Errorf("FOBS: reference to datum %s, which the payload does not hold", flare.LogSafe(id))
}

func uuidString(b [16]byte) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func (d *decoder) array(raw any) (any, error) {
	switch x := raw.(type) {
	case []byte: // 2.6: np.save bytes
		return npy.Decode(x)
	case msgpk.Map:
		switch x.String("type") {
		case "native":
			v, _ := x.Get("data")
			b, ok := v.([]byte)
			if !ok {
				return nil, errors.New("FOBS ndarray: native data is not bytes")
			}
			return npy.Decode(b)
		case "ref":
			item := x.String("data")
			if d.o.Array == nil {
				return nil, fmt.Errorf("FOBS ndarray %s is sent by reference, and nothing here downloads it", flare.LogSafe(item))
			}
			if d.fqcn == "" {
				return nil, fmt.Errorf("FOBS ndarray %s: the payload does not say where to download it", flare.LogSafe(item))
			}
			return d.o.Array(ArrayRef{Item: item, FQCN: d.fqcn, RefID: d.refID})
		}
	}
	return nil, errors.New("FOBS ndarray: neither bytes, native nor a reference")
}

// toPickle turns decoded values into the values a flare.Shareable holds
// (those of package pickle): maps become *pickle.Dict, lists pickle.List,
// tuples pickle.Tuple.
func toPickle(v any) any {
	switch x := v.(type) {
	case msgpk.Map:
		d := &pickle.Dict{Items: make([]pickle.Item, len(x))}
		for i, kv := range x {
			d.Items[i] = pickle.Item{Key: toPickle(kv.Key), Value: toPickle(kv.Value)}
		}
		return d
	case []any:
		l := make(pickle.List, len(x))
		for i, e := range x {
			l[i] = toPickle(e)
		}
		return l
	case Tuple:
		t := make(pickle.Tuple, len(x))
		for i, e := range x {
			t[i] = toPickle(e)
		}
		return t
	}
	return v
}

func shareable(data any) (*flare.Shareable, error) {
	m, ok := data.(msgpk.Map)
	if !ok {
		return nil, fmt.Errorf("FOBS Shareable: a %T, not a dict", data)
	}
	s := flare.NewShareable()
	for _, kv := range m {
		switch kv.Key {
		case "__headers__":
			h, ok := toPickle(kv.Value).(*pickle.Dict)
			if !ok {
				return nil, errors.New("FOBS Shareable: __headers__ is not a dict")
			}
			s.Headers = h
		case "DXO":
			dxo, err := decodeDXO(kv.Value)
			if err != nil {
				return nil, err
			}
			s.DXO = dxo
		default:
			s.Extra = append(s.Extra, pickle.Item{Key: toPickle(kv.Key), Value: toPickle(kv.Value)})
		}
	}
	return s, nil
}

func decodeDXO(v any) (*flare.DXO, error) {
	m, ok := v.(msgpk.Map)
	if !ok {
		return nil, errors.New("FOBS DXO: not a dict")
	}
	d := &flare.DXO{Meta: &pickle.Dict{}}
	d.Kind = m.String("kind")
	if d.Kind == "" {
		return nil, errors.New("FOBS DXO: no kind")
	}
	if meta, ok := m.Get("meta"); ok && meta != nil {
		pm, ok := toPickle(meta).(*pickle.Dict)
		if !ok {
			return nil, errors.New("FOBS DXO: meta is not a dict")
		}
		d.Meta = pm
	}
	data, _ := m.Get("data")
	dm, ok := data.(msgpk.Map)
	if data != nil && !ok {
		return nil, errors.New("FOBS DXO: data is not a dict")
	}
	for _, kv := range dm {
		name, ok := kv.Key.(string)
		if !ok {
			return nil, errors.New("FOBS DXO: a data key is not a string")
		}
		if t, ok := kv.Value.(*persistor.Tensor); ok {
			d.Data = append(d.Data, flare.NamedArray{Name: name, Array: t})
			continue
		}
		d.Values = append(d.Values, pickle.Item{Key: name, Value: toPickle(kv.Value)})
	}
	return d, nil
}

func flContext(data any) (*flare.FLContext, error) {
	l, ok := data.([]any)
	if !ok || len(l) != 2 {
		return nil, errors.New("FOBS FLContext: not [model, props]")
	}
	props, ok := l[1].(msgpk.Map)
	if !ok && l[1] != nil {
		return nil, errors.New("FOBS FLContext: props are not a dict")
	}
	c := &flare.FLContext{}
	for _, kv := range props {
		name, ok := kv.Key.(string)
		p, ok2 := kv.Value.(msgpk.Map)
		if !ok || !ok2 {
			return nil, errors.New("FOBS FLContext: a prop is not {value, mask}")
		}
		val, _ := p.Get("value")
		mask, _ := p.Get("mask")
		mi, _ := mask.(int64)
		c.Props = append(c.Props, flare.Prop{Name: name, Value: toPickle(val), Mask: mi})
	}
	return c, nil
}

func message(data any) (*Message, error) {
	m, ok := data.(msgpk.Map)
	if inner, ok2 := m.Get("data"); ok && ok2 {
		m, ok = inner.(msgpk.Map)
	}
	if !ok {
		return nil, errors.New("FOBS admin Message: not a data class")
	}
	msg := &Message{ID: m.String("id"), Topic: m.String("topic")}
	msg.Body, _ = m.Get("body")
	if h, _ := m.Get("headers"); h != nil {
		hm, ok := h.(msgpk.Map)
		if !ok {
			return nil, errors.New("FOBS admin Message: headers are not a dict")
		}
		msg.Headers = hm
	}
	if strings.TrimSpace(msg.Topic) == "" {
		return nil, errors.New("FOBS admin Message: no topic")
	}
	return msg, nil
}

// DecodeBytes decodes a FOBS payload as NVFlare 2.7+ writes it (a V27
// LOBS container).
func DecodeBytes(b []byte, o Options) (any, error) {
	c, err := lobs.Decode(b, lobs.V27)
	if err != nil {
		return nil, err
	}
	return Decode(c, o)
}

// DecodeMessage decodes an admin channel payload: an admin Message.
func DecodeMessage(b []byte) (*Message, error) {
	v, err := DecodeBytes(b, Options{})
	if err != nil {
		return nil, err
	}
	m, ok := v.(*Message)
	if !ok {
		return nil, fmt.Errorf("an admin request is a %T, not an admin Message", v)
	}
	return m, nil
}
