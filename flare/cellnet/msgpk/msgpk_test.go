package msgpk

import (
	"bytes"
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"
)

// Order, non-string keys, str apart from bin, and the integer and float
// forms survive a round trip, byte for byte.
func TestRoundTrip(t *testing.T) {
	v := Map{
		{Key: "b", Value: int64(1)}, {Key: "a", Value: []byte{0, 1}}, {Key: int64(-3), Value: "neg key"},
		{Key: Map{{Key: "__fobs_type__", Value: "JobMetaKey"}}, Value: []any{nil, true, 1.5, uint64(math.MaxUint64), int64(math.MinInt64)}},
		{Key: "ext", Value: Ext{Type: -1, Data: []byte{1, 2, 3, 4}}},
		{Key: "long", Value: strings.Repeat("x", 70000)},
	}
	b, err := Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Unmarshal(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, v) {
		t.Fatalf("round trip: %v", got)
	}
	b2, _ := Marshal(got)
	if !bytes.Equal(b, b2) {
		t.Fatal("re-encoding changed the bytes")
	}
	// Python's msgpack.packb({"a": 1, 2: [True, None, 0.5]})
	py := []byte{0x82, 0xa1, 'a', 0x01, 0x02, 0x93, 0xc3, 0xc0, 0xcb, 0x3f, 0xe0, 0, 0, 0, 0, 0, 0}
	want := Map{{Key: "a", Value: int64(1)}, {Key: int64(2), Value: []any{true, nil, 0.5}}}
	if got, err := Unmarshal(py); err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("python's bytes: %v %v", got, err)
	}
	if b, _ := Marshal(want); !bytes.Equal(b, py) {
		t.Fatalf("encodes as %x, python %x", b, py)
	}
}

// Declared sizes are checked against the bytes present, nesting and
// value counts are bounded, and trailing or missing bytes are errors.
func TestHostileInputRefused(t *testing.T) {
	deep := bytes.Repeat([]byte{0x91}, 100000)
	wide := append([]byte{0xdd, 0x00, 0x10, 0x00, 0x00}, bytes.Repeat([]byte{0xc0}, 1<<20+16)...)
	for name, b := range map[string][]byte{
		"str32 of 4 GiB":  {0xdb, 0xff, 0xff, 0xff, 0xff, 'a'},
		"bin32 of 4 GiB":  {0xc6, 0xff, 0xff, 0xff, 0xff, 'a'},
		"array32 of 4G":   {0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0},
		"map32 of 4G":     {0xdf, 0xff, 0xff, 0xff, 0xff, 0xc0},
		"ext32 of 4 GiB":  {0xc9, 0xff, 0xff, 0xff, 0xff, 1, 'a'},
		"deep":            deep,
		"many values":     wide,
		"trailing":        {0xc0, 0xc0},
		"truncated":       {0x92, 0x01},
		"empty":           {},
		"reserved code":   {0xc1},
		"truncated int64": {0xd3, 1, 2},
	} {
		if _, err := Unmarshal(b); err == nil {
			t.Errorf("%s: accepted", name)
		} else if (name == "deep" || name == "many values") && !errors.Is(err, ErrLimit) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func FuzzUnmarshal(f *testing.F) {
	f.Add([]byte{0x82, 0xa1, 'a', 0x01, 0x02, 0x93, 0xc3, 0xc0, 0xcb, 0x3f, 0xe0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{0xdb, 0xff, 0xff, 0xff, 0xff, 'a'})
	f.Add([]byte{0xd6, 0xff, 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := Unmarshal(b)
		if err != nil {
			return
		}
		out, err := Marshal(v)
		if err != nil {
			t.Fatalf("decoded value does not encode: %v", err)
		}
		if w, err := Unmarshal(out); err != nil || !reflect.DeepEqual(v, w) && !hasNaN(v) {
			t.Fatalf("round trip: %v %v", w, err)
		}
	})
}

func hasNaN(v any) bool {
	switch x := v.(type) {
	case float64:
		return math.IsNaN(x)
	case []any:
		for _, y := range x {
			if hasNaN(y) {
				return true
			}
		}
	case Map:
		for _, kv := range x {
			if hasNaN(kv.Key) || hasNaN(kv.Value) {
				return true
			}
		}
	}
	return false
}
