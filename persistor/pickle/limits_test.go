package pickle

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/nlpodyssey/gopickle/types"
)

// BillionLaughs is a protocol 2 pickle of levels (at most 255) nested
// 2-tuples, each holding the level below twice through the memo: a few
// hundred bytes that stand for 2^levels copies of leaf when walked as a tree.
func BillionLaughs(levels int, leaf string) []byte {
	b := []byte{0x80, 2, 'X'}
	b = binary.LittleEndian.AppendUint32(b, uint32(len(leaf)))
	b = append(b, leaf...)
	b = append(b, 'q', 0)
	for i := 1; i <= levels; i++ {
		b = append(b, 'h', byte(i-1), 'h', byte(i-1), 0x86, 'q', byte(i))
	}
	return append(b, '.')
}

// HugeLong4 is a pickle of one LONG4 integer of n bytes.
func HugeLong4(n int) []byte {
	b := []byte{0x80, 2, 0x8b}
	b = binary.LittleEndian.AppendUint32(b, uint32(n))
	b = append(b, bytes.Repeat([]byte{0x5a}, n)...)
	return append(b, '.')
}

// HugeDecimal is a protocol 0 pickle of one LONG (op 'L') or INT (op 'I')
// of n decimal digits.
func HugeDecimal(op byte, n int) []byte {
	b := []byte{op}
	b = append(b, bytes.Repeat([]byte{'7'}, n)...)
	return append(b, '\n', '.')
}

// MissingMemo pushes a memo entry that was never stored.
var MissingMemo = []byte("\x80\x02]q\x00h\x05a.")

func plainUnpickler() *Unpickler { return &Unpickler{} }

func TestBillionLaughsRefused(t *testing.T) {
	data := BillionLaughs(80, "ha")
	if len(data) > 600 {
		t.Fatalf("the bomb is %d bytes", len(data))
	}
	start := time.Now()
	_, _, err := plainUnpickler().Unpickle(data)
	if err == nil || !strings.Contains(err.Error(), "walked as a tree") {
		t.Fatalf("err %v, want the tree limit", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("took %v to refuse", d)
	}
	// The same, for the bytes a shared string stands for: 2^12 values are
	// few, but 2^12 copies of 1 KiB are more than 4 × 1 KiB + 1 MiB.
	_, _, err = plainUnpickler().Unpickle(BillionLaughs(12, strings.Repeat("x", 1024)))
	if err == nil || !strings.Contains(err.Error(), "bytes") {
		t.Fatalf("shared 1 KiB string 2^12 times: err %v", err)
	}
	// Sharing within the limits is kept and converted.
	v, _, err := plainUnpickler().Unpickle(BillionLaughs(10, "ha"))
	if err != nil {
		t.Fatal(err)
	}
	for range 10 {
		tup, ok := v.(Tuple)
		if !ok || len(tup) != 2 {
			t.Fatalf("got %#v", v)
		}
		v = tup[1]
	}
	if v != "ha" {
		t.Fatalf("leaf %#v", v)
	}
	// A caller may tighten the limits.
	tight := &Unpickler{MaxValues: 1000}
	if _, _, err := tight.Unpickle(BillionLaughs(10, "ha")); !errors.Is(err, errTooManyValues) {
		t.Errorf("MaxValues 1000 for 2047 values: %v", err)
	}
	tight = &Unpickler{MaxValueBytes: 1000}
	if _, _, err := tight.Unpickle(BillionLaughs(10, "ha")); err == nil || !strings.Contains(err.Error(), "more than 1000 bytes") {
		t.Errorf("MaxValueBytes 1000 for 2048 bytes: %v", err)
	}
}

func TestBuiltValuesBounded(t *testing.T) {
	// 2000 empty dicts on the stack: each costs gopickle some 150 bytes.
	data := append([]byte("\x80\x02("), bytes.Repeat([]byte("}"), 2000)...)
	data = append(data, "l."...)
	if _, _, err := plainUnpickler().Unpickle(data); err != nil {
		t.Fatal(err)
	}
	u := &Unpickler{MaxValues: 1000}
	if _, _, err := u.Unpickle(data); err == nil || !strings.Contains(err.Error(), "builds more than 1000") {
		t.Errorf("2001 values with MaxValues 1000: %v", err)
	}
	// Memo references count too: one value pushed 2000 times.
	data = append([]byte("\x80\x02(Nq\x000"), bytes.Repeat([]byte("h\x00"), 2000)...)
	data = append(data, "l."...)
	if _, _, err := u.Unpickle(data); err == nil || !strings.Contains(err.Error(), "builds more than 1000") {
		t.Errorf("2000 memo references with MaxValues 1000: %v", err)
	}
	// So do memo entries: 2000 of them for one value.
	data = []byte("\x80\x02N")
	for i := range 2000 {
		data = append(data, 'r')
		data = binary.LittleEndian.AppendUint32(data, uint32(i))
	}
	data = append(data, '.')
	if _, _, err := u.Unpickle(data); err == nil || !strings.Contains(err.Error(), "builds more than 1000") {
		t.Errorf("2000 memo entries with MaxValues 1000: %v", err)
	}
	// MARKs nest no deeper than containers may.
	if _, _, err := plainUnpickler().Unpickle(append(bytes.Repeat([]byte("("), 300), 'N', '.')); err == nil || !strings.Contains(err.Error(), "MARK") {
		t.Errorf("300 open MARKs: %v", err)
	}
}

func TestConvertBoundsSharedSubtrees(t *testing.T) {
	// gopickle builds shared tuples cheaply; converting them copies each
	// subtree once per reference.
	var v any = "ha"
	for range 60 {
		t := types.Tuple{v, v}
		v = &t
	}
	start := time.Now()
	if _, err := Convert(v); !errors.Is(err, errTooManyValues) {
		t.Fatalf("err %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("took %v to refuse", d)
	}
}

func TestHugeIntegersRefused(t *testing.T) {
	cases := map[string][]byte{
		"1 MiB LONG4":            HugeLong4(1 << 20),
		"LONG4 over the limit":   HugeLong4(MaxLongBytes + 1),
		"4-million-digit LONG":   HugeDecimal('L', 4_000_000),
		"4-million-digit INT":    HugeDecimal('I', 4_000_000),
		"LONG of 4301 digits":    HugeDecimal('L', MaxIntDigits+1),
		"negative LONG too long": append([]byte("L-"), HugeDecimal('L', MaxIntDigits+1)[1:]...),
	}
	u := &Unpickler{MaxBytes: 8 << 20}
	for name, data := range cases {
		start := time.Now()
		_, _, err := u.Unpickle(data)
		if err == nil || !strings.Contains(err.Error(), "exceeds the limit") {
			t.Errorf("%s: err %v", name, err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("%s: took %v", name, d)
		}
	}
	// At the limits they are read.
	v, _, err := u.Unpickle(HugeDecimal('L', MaxIntDigits))
	if err != nil {
		t.Fatal(err)
	}
	want, _ := new(big.Int).SetString(strings.Repeat("7", MaxIntDigits), 10)
	if b, ok := v.(*big.Int); !ok || b.Cmp(want) != 0 {
		t.Errorf("4300-digit LONG read as %T", v)
	}
	if _, _, err := u.Unpickle(HugeLong4(MaxLongBytes)); err != nil {
		t.Errorf("LONG4 of %d bytes: %v", MaxLongBytes, err)
	}
}

func TestMissingMemoIndexRefused(t *testing.T) {
	// Python: "Memo value not found at index 5"; gopickle would push None.
	for _, data := range [][]byte{MissingMemo, []byte("(lp0\ng7\na."), []byte("\x80\x02j\x00\x01\x00\x00.")} {
		if _, _, err := plainUnpickler().Unpickle(data); err == nil || !strings.Contains(err.Error(), "memo value not found") {
			t.Errorf("%q: err %v", data, err)
		}
	}
	// Stack underflow, as Python refuses it, before gopickle sees it.
	for _, data := range []string{"\x80\x02a.", "\x80\x02(.", "\x80\x02N(s.", "\x80\x021."} {
		if _, _, err := plainUnpickler().Unpickle([]byte(data)); err == nil {
			t.Errorf("%q accepted", data)
		}
	}
}

func TestDefaultLimitsPassLargeRealMessages(t *testing.T) {
	// The shape of 200 clients' results: each 18 named arrays (dtype,
	// shape, 4 KiB of data) and a few metrics, as one dict.
	clients := &Dict{}
	for c := range 200 {
		arrays := &Dict{}
		for a := range 18 {
			arrays.Set(string(rune('a'+a))+".weight", Tuple{"float32", Tuple{int64(32), int64(32)}, bytes.Repeat([]byte{byte(c), byte(a)}, 2048)})
		}
		metrics := &Dict{Items: []Item{{"val_loss", 0.25}, {"val_acc", 0.9}, {"n", int64(1000)}}}
		clients.Set("site-"+strings.Repeat("x", c%7)+string(rune('0'+c%10)), &Dict{Items: []Item{{"data", arrays}, {"meta", metrics}}})
	}
	var buf bytes.Buffer
	e := NewEncoder(&buf)
	e.Protocol = 3 // as NVFlare sends Shareables
	if err := e.Encode(clients); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	if _, _, err := plainUnpickler().Unpickle(b); err != nil {
		t.Fatalf("%d-byte pickle of 200 clients' results: %v", len(b), err)
	}
}

func TestDroppedCallArgumentsBounded(t *testing.T) {
	// A shared tuple of 2^17 values handed to persistent_load 100 times,
	// each result dropped: the result is None, but each call would convert
	// the tuple again.
	laughs := BillionLaughs(16, "ha")
	data := append([]byte{}, laughs[:len(laughs)-1]...)
	data = append(data, '0')
	for range 100 {
		data = append(data, 'h', 16, 'Q', '0')
	}
	data = append(data, 'N', '.')
	calls := 0
	u := &Unpickler{PersistentLoad: func(pid any) (any, error) { calls++; return nil, nil }}
	_, _, err := u.Unpickle(data)
	if err == nil || !strings.Contains(err.Error(), "to the objects it rebuilds") {
		t.Fatalf("err %v", err)
	}
	if calls != 0 {
		t.Errorf("persistent_load called %d times before the refusal", calls)
	}
	// Three small ones are fine.
	data = []byte("\x80\x02(X\x01\x00\x00\x000QX\x01\x00\x00\x001QX\x01\x00\x00\x002Ql.")
	if _, _, err := u.Unpickle(data); err != nil || calls != 3 {
		t.Fatalf("three persistent ids: %v, %d calls", err, calls)
	}
}
