package fobs

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"math/big"
	"strconv"
	"time"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/cellnet/lobs"
	"github.com/flarego/flarego/flare/cellnet/msgpk"
	"github.com/flarego/flarego/flare/npy"
	"github.com/flarego/flarego/persistor"
	"github.com/flarego/flarego/persistor/pickle"
)

// Decomposer names NVFlare writes for the types Encode writes.
const (
	dcDict     = "nvflare.fuel.utils.fobs.decomposer.DictDecomposer"
	dcContext  = "nvflare.apis.utils.decomposers.flare_decomposers.ContextDecomposer"
	dcEnum     = "nvflare.fuel.utils.fobs.decomposer.EnumTypeDecomposer"
	dcNumpy    = "nvflare.app_common.decomposers.numpy_decomposers.NumpyArrayDecomposer"
	dcDataCls  = "nvflare.fuel.utils.fobs.decomposer.DataClassDecomposer"
	dcTuple    = "nvflare.fuel.utils.fobs.decomposers.core_decomposers.TupleDecomposer"
	dcDatetime = "nvflare.fuel.utils.fobs.decomposers.core_decomposers.DatetimeDecomposer"
	typeDXOKnd = "nvflare.apis.dxo.DataKind"
)

// Encode writes v — a *flare.Shareable, *flare.FLContext, *Message, or a
// plain value (msgpk's, and those of package pickle) — as a FOBS payload:
// typed objects as NVFlare's decomposers write them, arrays native (.npy
// bytes inside the body, as NVFlare 2.7.0 sends them).
func Encode(v any) ([]byte, error) { return EncodeWith(v, EncodeOptions{}) }

// EncodeOptions say how to write what a payload need not carry itself.
type EncodeOptions struct {
	// ArrayRefs, when set, sends the payload's arrays by reference, as
	// NVFlare 2.7.2+ does: each distinct array (by pointer) becomes item
	// T0, T1, … in the order met and travels as {"type": "ref", "data":
	// item}; ArrayRefs is called once with them all, before the payload is
	// written, to serve them (a download service) and say where: the cell
	// fqcn, batch refID. The payload then carries the text datum (DOT 3)
	// {"fqcn", "ref_id"}. A payload without arrays does not call it.
	ArrayRefs func(items []flare.NamedArray) (fqcn, refID string, err error)
}

// EncodeWith is Encode with options.
func EncodeWith(v any, o EncodeOptions) ([]byte, error) {
	e := &encoder{o: o}
	body, err := e.value(v, 0)
	if err != nil {
		return nil, err
	}
	b, err := msgpk.Marshal(body)
	if err != nil {
		return nil, err
	}
	c := &lobs.Container{Main: b}
	if len(e.items) > 0 {
		fqcn, refID, err := o.ArrayRefs(e.items)
		if err != nil {
			return nil, fmt.Errorf("FOBS: serving %d arrays by reference: %w", len(e.items), err)
		}
		// As NVFlare writes it: json.dumps, with Python's separators.
		ref := fmt.Appendf(nil, `{"fqcn": %s, "ref_id": %s}`, jsonString(fqcn), jsonString(refID))
		d := lobs.Datum{Marker: lobs.MarkerText, Type: dotNumpyDownload, Value: ref}
		rand.Read(d.ID[:])
		d.ID[6] = d.ID[6]&0x0f | 0x40 // a version 4 UUID, as NVFlare's
		d.ID[8] = d.ID[8]&0x3f | 0x80
		c.Datums = append(c.Datums, d)
	}
	return c.Encode(lobs.V27), nil
}

func jsonString(s string) []byte {
	b, _ := json.Marshal(s) // a string always marshals
	return b
}

// encoder is one payload's encoding: the arrays it sends by reference.
type encoder struct {
	o     EncodeOptions
	items []flare.NamedArray
	ids   map[*persistor.Tensor]string
}

func obj(typ, dc string, data any) msgpk.Map {
	return msgpk.Map{{Key: keyType, Value: typ}, {Key: keyData, Value: data}, {Key: keyDecomposer, Value: dc}}
}

func (e *encoder) value(v any, depth int) (any, error) {
	if depth > maxDepth {
		return nil, fmt.Errorf("FOBS: value nested deeper than %d", maxDepth)
	}
	switch x := v.(type) {
	case nil, bool, int64, uint64, float64, string, []byte, msgpk.Ext:
		return x, nil
	case int:
		return int64(x), nil
	case float32:
		return float64(x), nil
	case *big.Int:
		if !x.IsInt64() {
			return nil, fmt.Errorf("FOBS: integer %s does not fit msgpack", x)
		}
		return x.Int64(), nil
	case time.Time:
		return obj("datetime.datetime", dcDatetime, isoformat(x)), nil
	case Enum:
		if !enums[x.Type] {
			return nil, fmt.Errorf("FOBS: enum %s is not one flarego writes", x.Type)
		}
		return obj(x.Type, dcEnum, x.Name), nil
	case *flare.Shareable:
		return e.shareable(x, depth)
	case *flare.FLContext:
		props := make(msgpk.Map, 0, len(x.Props))
		for _, p := range x.Props {
			val, err := e.value(p.Value, depth+1)
			if err != nil {
				return nil, err
			}
			props = append(props, msgpk.KV{Key: p.Name, Value: msgpk.Map{{Key: "value", Value: val}, {Key: "mask", Value: p.Mask}}})
		}
		return obj("nvflare.apis.fl_context.FLContext", dcContext, []any{nil, props}), nil
	case *Message:
		body, err := e.value(x.Body, depth+1)
		if err != nil {
			return nil, err
		}
		headers, err := e.value(x.Headers, depth+1)
		if err != nil {
			return nil, err
		}
		return obj("nvflare.private.admin_defs.Message", dcDataCls, msgpk.Map{{Key: "data", Value: msgpk.Map{
			{Key: "id", Value: x.ID}, {Key: "topic", Value: x.Topic}, {Key: "body", Value: body}, {Key: "headers", Value: headers}}}}), nil
	case *persistor.Tensor:
		if e.o.ArrayRefs != nil {
			return obj("numpy.ndarray", dcNumpy, msgpk.Map{{Key: "type", Value: "ref"}, {Key: "data", Value: e.ref(x)}}), nil
		}
		b, err := npy.Encode(x)
		if err != nil {
			return nil, err
		}
		return obj("numpy.ndarray", dcNumpy, msgpk.Map{{Key: "type", Value: "native"}, {Key: "data", Value: b}}), nil
	case msgpk.Map:
		out := make(msgpk.Map, len(x))
		for i, kv := range x {
			k, err := e.value(kv.Key, depth+1)
			if err != nil {
				return nil, err
			}
			val, err := e.value(kv.Value, depth+1)
			if err != nil {
				return nil, err
			}
			out[i] = msgpk.KV{Key: k, Value: val}
		}
		return out, nil
	case *pickle.Dict:
		return e.value(fromPickleDict(x), depth)
	case []any:
		return e.list(x, depth)
	case pickle.List:
		return e.list(x, depth)
	case Tuple:
		l, err := e.list(x, depth)
		if err != nil {
			return nil, err
		}
		return obj("tuple", dcTuple, l), nil
	case pickle.Tuple:
		return e.value(Tuple(x), depth)
	}
	return nil, fmt.Errorf("FOBS: cannot encode a %T", v)
}

// ref is the item id of array t, a new one the first time t is met.
func (e *encoder) ref(t *persistor.Tensor) string {
	if id, ok := e.ids[t]; ok {
		return id
	}
	if e.ids == nil {
		e.ids = map[*persistor.Tensor]string{}
	}
	id := "T" + strconv.Itoa(len(e.items))
	e.ids[t] = id
	e.items = append(e.items, flare.NamedArray{Name: id, Array: t})
	return id
}

// isoformat writes t as Python's datetime.isoformat does: microseconds
// only when there are any, and no offset for UTC (a naive datetime, which
// decodes as UTC).
func isoformat(t time.Time) string {
	layout := "2006-01-02T15:04:05"
	if t.Nanosecond()/1000 != 0 {
		layout += ".000000"
	}
	if t.Location() != time.UTC {
		layout += "-07:00"
	}
	return t.Format(layout)
}

func (e *encoder) list(x []any, depth int) ([]any, error) {
	out := make([]any, len(x))
	for i, y := range x {
		var err error
		if out[i], err = e.value(y, depth+1); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func fromPickleDict(d *pickle.Dict) msgpk.Map {
	m := make(msgpk.Map, len(d.Items))
	for i, it := range d.Items {
		m[i] = msgpk.KV{Key: it.Key, Value: it.Value}
	}
	return m
}

func (e *encoder) shareable(s *flare.Shareable, depth int) (any, error) {
	headers := msgpk.Map{}
	if s.Headers != nil {
		headers = fromPickleDict(s.Headers)
	}
	if _, ok := headers.Get(flare.HeaderContentType); !ok && s.DXO != nil {
		// As DXO.to_shareable does; NVFlare's aggregator rejects a DXO without it.
		headers = append(headers, msgpk.KV{Key: flare.HeaderContentType, Value: "DXO"})
	}
	m := msgpk.Map{{Key: "__headers__", Value: headers}}
	if s.DXO != nil {
		data := msgpk.Map{}
		for _, a := range s.DXO.Data {
			data = append(data, msgpk.KV{Key: a.Name, Value: a.Array})
		}
		for _, it := range s.DXO.Values {
			data = append(data, msgpk.KV{Key: it.Key, Value: it.Value})
		}
		meta := msgpk.Map{}
		if s.DXO.Meta != nil {
			meta = fromPickleDict(s.DXO.Meta)
		}
		m = append(m, msgpk.KV{Key: "DXO", Value: msgpk.Map{
			{Key: "kind", Value: obj(typeDXOKnd, dcEnum, s.DXO.Kind)}, {Key: "data", Value: data}, {Key: "meta", Value: meta}}})
	}
	for _, it := range s.Extra {
		m = append(m, msgpk.KV{Key: it.Key, Value: it.Value})
	}
	data, err := e.value(m, depth+1)
	if err != nil {
		return nil, err
	}
	return obj("nvflare.apis.shareable.Shareable", dcDict, data), nil
}
