package pickle

import (
	"bytes"
	"errors"
	"math/big"
	"reflect"
	"strings"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	big1, _ := new(big.Int).SetString("-123456789012345678901234567890", 10)
	v := &OrderedDict{Items: []Item{
		{"none", nil}, {"t", true}, {"f", false},
		{"ints", List{int64(0), int64(255), int64(256), int64(65535), int64(65536), int64(-1), int64(1 << 40), int64(-1 << 40), big1}},
		{"float", 0.5},
		{"str", "héllo"},
		{"tuple", Tuple{int64(1), "a", Tuple{}}},
		{"dict", &Dict{Items: []Item{{"k", "v"}}}},
	}}
	b, err := Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	u := &Unpickler{Allowed: map[Global]any{{"collections", "OrderedDict"}: nil}}
	got, n, err := u.Unpickle(b)
	if err != nil {
		t.Fatal(err)
	}
	if n != len(b) {
		t.Errorf("consumed %d of %d bytes", n, len(b))
	}
	if !reflect.DeepEqual(got, v) {
		t.Errorf("got %#v\nwant %#v", got, v)
	}
}

func TestBatches(t *testing.T) {
	// CPython writes an OrderedDict's items per 1000 with SETITEMS and a
	// lone last item with SETITEM; a plain dict always ends with SETITEMS,
	// after an empty batch when the last one was full.
	od, d := &OrderedDict{}, &Dict{}
	for i := 0; i < 1001; i++ {
		od.Items = append(od.Items, Item{int64(i), nil})
		d.Items = append(d.Items, Item{int64(i), nil})
	}
	b, _ := Marshal(od)
	if b[len(b)-2] != opSetItem {
		t.Fatalf("OrderedDict batching differs from CPython: ends %x", b[len(b)-4:])
	}
	b, _ = Marshal(d)
	if b[len(b)-2] != opSetItems {
		t.Fatalf("dict batching differs from CPython: ends %x", b[len(b)-4:])
	}
	d.Items = d.Items[:1000]
	b, _ = Marshal(d)
	if !bytes.HasSuffix(b, []byte{opSetItems, opMark, opSetItems, opStop}) {
		t.Fatalf("dict of 1000 differs from CPython: ends %x", b[len(b)-4:])
	}
}

func TestNoFloats(t *testing.T) {
	var buf bytes.Buffer
	e := NewEncoder(&buf)
	e.NoFloats = true
	if err := e.Encode(List{1.5}); err == nil {
		t.Fatal("float written with NoFloats")
	}
}

func TestScanRejects(t *testing.T) {
	u := &Unpickler{}
	cases := map[string]string{
		"os.system via REDUCE":   "\x80\x02cos\nsystem\nX\x02\x00\x00\x00id\x85R.",
		"builtins.eval via INST": "(S'1'\nibuiltins\neval\n.",
		"unknown opcode":         "\x80\x02\xff.",
		"truncated":              "\x80\x02X\x10\x00\x00\x00abc",
		"huge length":            "\x80\x04\x8e\xff\xff\xff\xff\xff\xff\xff\x7f.",
		"no STOP":                "\x80\x02K\x01",
		"bad protocol":           "\x80\x09.",
	}
	for name, data := range cases {
		if _, _, err := u.Unpickle([]byte(data)); err == nil {
			t.Errorf("%s: accepted", name)
		} else if strings.Contains(name, "os.system") && (!errors.Is(err, ErrForbidden) || !strings.Contains(err.Error(), "os.system")) {
			t.Errorf("%s: %v", name, err)
		}
	}
	// STACK_GLOBAL names are checked when objects are built.
	sg := "\x80\x04\x8c\x02os\x8c\x06system\x93."
	if _, _, err := u.Unpickle([]byte(sg)); !errors.Is(err, ErrForbidden) {
		t.Errorf("STACK_GLOBAL os.system: %v", err)
	}
	// Self-reference is bounded.
	loop := "\x80\x02]q\x00h\x00a."
	if _, _, err := u.Unpickle([]byte(loop)); err == nil {
		t.Error("self-referencing list accepted")
	}
	// The size limit.
	small := &Unpickler{MaxBytes: 8}
	if _, _, err := small.Unpickle([]byte("\x80\x02X\x10\x00\x00\x00aaaaaaaaaaaaaaaa.")); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Errorf("size limit: %v", err)
	}
}

func FuzzUnpickle(f *testing.F) {
	f.Add([]byte("\x80\x02}q\x00X\x01\x00\x00\x00aq\x01K\x01s."))
	f.Add([]byte("\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00idq\x01\x85q\x02Rq\x03."))
	f.Add([]byte("\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00]\x94(K\x01K\x02e."))
	f.Add([]byte("(lp0\nI1\naI2\na."))
	// The attacks the limits stop.
	f.Add(BillionLaughs(80, "ha"))
	f.Add(BillionLaughs(12, strings.Repeat("x", 1024)))
	f.Add(HugeLong4(MaxLongBytes + 1))
	f.Add(HugeDecimal('L', MaxIntDigits+1))
	f.Add(HugeDecimal('I', MaxIntDigits+1))
	f.Add(MissingMemo)
	f.Add([]byte("\x80\x02]q\x00h\x00a."))
	u := &Unpickler{Allowed: map[Global]any{{Module: "collections", Name: "OrderedDict"}: nil}, MaxBytes: 1 << 16}
	f.Fuzz(func(t *testing.T, data []byte) {
		v, _, err := u.Unpickle(data)
		if err != nil {
			return
		}
		// Plain values must re-encode.
		if _, err := Marshal(v); err != nil {
			t.Logf("re-encode: %v", err)
		}
	})
}
