// Package msgpk is the msgpack layer of NVFlare's CellNet (2.4+): SFM frame
// headers, HELLO/READY payloads and FOBS bodies are msgpack as Python's
// msgpack package writes them. [Unmarshal] decodes into Go values that keep
// what matters there and what Go's maps would lose: map order, keys of any
// type (FOBS puts objects in key position), and str apart from bin.
// [Marshal] writes those values back as Python's msgpack does (smallest
// integer form, floats as float64), so a value decoded and encoded again
// gives the same bytes.
//
// Decoding is built for bytes from a peer that is not trusted: every
// length a value declares is checked against the bytes present before
// anything is allocated, nesting is bounded, and so is the number of values
// one input may build.
//
// Values: nil, bool, int64 (uint64 for integers above MaxInt64), float64
// (float32 on the wire becomes float64), string, []byte, []any, [Map] and
// [Ext]. The msgpack codes themselves are read with
// github.com/vmihailenco/msgpack/v5.
package msgpk

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"

	"github.com/vmihailenco/msgpack/v5"
	"github.com/vmihailenco/msgpack/v5/msgpcode"
)

// A Map is a msgpack map in wire order.
type Map []KV

// KV is one entry of a Map.
type KV struct {
	Key, Value any
}

// Get returns the value of the first entry whose key is the string key.
func (m Map) Get(key string) (any, bool) {
	for _, kv := range m {
		if k, ok := kv.Key.(string); ok && k == key {
			return kv.Value, true
		}
	}
	return nil, false
}

// String returns the string value of key, or "" if it is absent or not a
// string.
func (m Map) String(key string) string {
	v, _ := m.Get(key)
	s, _ := v.(string)
	return s
}

// With returns a copy of m in which the first entry with the string key
// key has value v (appended when there is none).
func (m Map) With(key string, v any) Map {
	out := append(Map{}, m...)
	for i, kv := range out {
		if k, ok := kv.Key.(string); ok && k == key {
			out[i].Value = v
			return out
		}
	}
	return append(out, KV{Key: key, Value: v})
}

// Ext is a msgpack extension value.
type Ext struct {
	Type int8
	Data []byte
}

// Limits bound what one input may build.
type Limits struct {
	MaxDepth  int // nesting of arrays and maps
	MaxValues int // values built in all
}

// DefaultLimitsDepth is DefaultLimits' nesting bound.
const DefaultLimitsDepth = 64

// DefaultLimits suit frame headers and FOBS bodies (whose large data
// travel as datums, not in the body).
var DefaultLimits = Limits{MaxDepth: DefaultLimitsDepth, MaxValues: 1 << 20}

// ErrLimit is wrapped by the errors of an input past its Limits.
var ErrLimit = errors.New("msgpack input past its limits")

// Unmarshal decodes one msgpack value that is all of b, with DefaultLimits.
func Unmarshal(b []byte) (any, error) { return UnmarshalLimits(b, DefaultLimits) }

// UnmarshalLimits is Unmarshal with other limits.
func UnmarshalLimits(b []byte, lim Limits) (any, error) {
	r := bytes.NewReader(b)
	d := &decoder{r: r, dec: msgpack.NewDecoder(r), lim: lim}
	v, err := d.value(0)
	if err != nil {
		return nil, err
	}
	if r.Len() != 0 {
		return nil, fmt.Errorf("msgpack: %d bytes after the value", r.Len())
	}
	return v, nil
}

type decoder struct {
	r      *bytes.Reader
	dec    *msgpack.Decoder
	lim    Limits
	values int
}

// room checks that n items of at least min bytes each can be in what is left.
func (d *decoder) room(n, min int, what string) error {
	if n < 0 || int64(n)*int64(min) > int64(d.r.Len()) {
		return fmt.Errorf("msgpack: %s declares %d, more than the %d bytes left", what, n, d.r.Len())
	}
	return nil
}

func (d *decoder) count(n int) error {
	d.values += n
	if d.values > d.lim.MaxValues {
		return fmt.Errorf("msgpack: more than %d values: %w", d.lim.MaxValues, ErrLimit)
	}
	return nil
}

func (d *decoder) value(depth int) (any, error) {
	if err := d.count(1); err != nil {
		return nil, err
	}
	c, err := d.dec.PeekCode()
	if err != nil {
		return nil, eof(err)
	}
	switch {
	case c == msgpcode.Nil:
		return nil, d.dec.DecodeNil()
	case c == msgpcode.True || c == msgpcode.False:
		return d.dec.DecodeBool()
	case msgpcode.IsFixedNum(c) || c == msgpcode.Int8 || c == msgpcode.Int16 || c == msgpcode.Int32 || c == msgpcode.Int64 ||
		c == msgpcode.Uint8 || c == msgpcode.Uint16 || c == msgpcode.Uint32:
		v, err := d.dec.DecodeInt64()
		return v, eof(err)
	case c == msgpcode.Uint64:
		v, err := d.dec.DecodeUint64()
		if err != nil {
			return nil, eof(err)
		}
		if v <= math.MaxInt64 {
			return int64(v), nil
		}
		return v, nil
	case c == msgpcode.Float || c == msgpcode.Double:
		v, err := d.dec.DecodeFloat64()
		return v, eof(err)
	case msgpcode.IsString(c):
		n, err := d.strLen(c)
		if err != nil {
			return nil, err
		}
		b, err := d.read(n, "a string")
		return string(b), err
	case msgpcode.IsBin(c):
		n, err := d.dec.DecodeBytesLen()
		if err != nil {
			return nil, eof(err)
		}
		return d.read(n, "bytes")
	case msgpcode.IsFixedArray(c) || c == msgpcode.Array16 || c == msgpcode.Array32:
		n, err := d.dec.DecodeArrayLen()
		if err != nil {
			return nil, eof(err)
		}
		if depth >= d.lim.MaxDepth {
			return nil, fmt.Errorf("msgpack: nested deeper than %d: %w", d.lim.MaxDepth, ErrLimit)
		}
		if err := d.room(n, 1, "an array"); err != nil {
			return nil, err
		}
		a := make([]any, n)
		for i := range a {
			if a[i], err = d.value(depth + 1); err != nil {
				return nil, err
			}
		}
		return a, nil
	case msgpcode.IsFixedMap(c) || c == msgpcode.Map16 || c == msgpcode.Map32:
		n, err := d.dec.DecodeMapLen()
		if err != nil {
			return nil, eof(err)
		}
		if depth >= d.lim.MaxDepth {
			return nil, fmt.Errorf("msgpack: nested deeper than %d: %w", d.lim.MaxDepth, ErrLimit)
		}
		if err := d.room(n, 2, "a map"); err != nil {
			return nil, err
		}
		m := make(Map, n)
		for i := range m {
			if m[i].Key, err = d.value(depth + 1); err != nil {
				return nil, err
			}
			if m[i].Value, err = d.value(depth + 1); err != nil {
				return nil, err
			}
		}
		return m, nil
	case msgpcode.IsFixedExt(c) || msgpcode.IsExt(c):
		typ, n, err := d.dec.DecodeExtHeader()
		if err != nil {
			return nil, eof(err)
		}
		b, err := d.read(n, "an extension")
		return Ext{Type: typ, Data: b}, err
	}
	return nil, fmt.Errorf("msgpack: unknown code 0x%02x", c)
}

// strLen reads a string's length without its bytes.
func (d *decoder) strLen(c byte) (int, error) {
	if _, err := d.r.ReadByte(); err != nil {
		return 0, eof(err)
	}
	if msgpcode.IsFixedString(c) {
		return int(c & msgpcode.FixedStrMask), nil
	}
	size := map[byte]int{msgpcode.Str8: 1, msgpcode.Str16: 2, msgpcode.Str32: 4}[c]
	var buf [4]byte
	if _, err := io.ReadFull(d.r, buf[:size]); err != nil {
		return 0, eof(err)
	}
	n := 0
	for _, b := range buf[:size] {
		n = n<<8 | int(b)
	}
	return n, nil
}

func (d *decoder) read(n int, what string) ([]byte, error) {
	if err := d.room(n, 1, what); err != nil {
		return nil, err
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(d.r, b); err != nil {
		return nil, eof(err)
	}
	return b, nil
}

func eof(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return errors.New("msgpack: input ends inside a value")
	}
	return err
}

// Marshal encodes v (the values Unmarshal gives, and also int and
// float32) as Python's msgpack does.
func Marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	e := msgpack.NewEncoder(&buf)
	if err := encode(e, v, 0); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func encode(e *msgpack.Encoder, v any, depth int) error {
	if depth > DefaultLimits.MaxDepth {
		return errors.New("msgpack: value nested too deep to encode")
	}
	switch x := v.(type) {
	case nil:
		return e.EncodeNil()
	case bool:
		return e.EncodeBool(x)
	case int:
		return e.EncodeInt(int64(x))
	case int64:
		return e.EncodeInt(x)
	case uint64:
		return e.EncodeUint(x)
	case float64:
		return e.EncodeFloat64(x)
	case float32:
		return e.EncodeFloat64(float64(x))
	case string:
		return e.EncodeString(x)
	case []byte:
		if err := e.EncodeBytesLen(len(x)); err != nil {
			return err
		}
		_, err := e.Writer().Write(x)
		return err
	case []any:
		if err := e.EncodeArrayLen(len(x)); err != nil {
			return err
		}
		for _, y := range x {
			if err := encode(e, y, depth+1); err != nil {
				return err
			}
		}
		return nil
	case Map:
		if err := e.EncodeMapLen(len(x)); err != nil {
			return err
		}
		for _, kv := range x {
			if err := encode(e, kv.Key, depth+1); err != nil {
				return err
			}
			if err := encode(e, kv.Value, depth+1); err != nil {
				return err
			}
		}
		return nil
	case Ext:
		if err := e.EncodeExtHeader(x.Type, len(x.Data)); err != nil {
			return err
		}
		_, err := e.Writer().Write(x.Data)
		return err
	}
	return fmt.Errorf("msgpack: cannot encode a %T", v)
}
