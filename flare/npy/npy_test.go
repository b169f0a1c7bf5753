package npy

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/flarego/flarego/persistor"
)

// numpy's own files decode to the arrays saved, and encode again to the
// same bytes.
func TestNumpyFiles(t *testing.T) {
	for name, want := range map[string]struct {
		dt    persistor.DType
		shape []int
	}{
		"f4_3x3": {persistor.Float32, []int{3, 3}}, "f8_vec": {persistor.Float64, []int{3}},
		"i8_scalar": {persistor.Int64, []int{}}, "u1_2x2x2": {persistor.Uint8, []int{2, 2, 2}},
		"b1_empty": {persistor.Bool, []int{0, 4}},
	} {
		b, err := os.ReadFile(filepath.Join("..", "..", "testdata", "npy", name+".npy"))
		if err != nil {
			t.Fatal(err)
		}
		tn, err := Decode(b)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if tn.DType != want.dt || !reflect.DeepEqual(tn.Shape, want.shape) {
			t.Fatalf("%s: %s %v", name, tn.DType, tn.Shape)
		}
		out, err := Encode(tn)
		if err != nil || !bytes.Equal(out, b) {
			t.Fatalf("%s: encodes to other bytes (%v)\n%q\n%q", name, err, out, b)
		}
	}
	b, _ := os.ReadFile(filepath.Join("..", "..", "testdata", "npy", "f4_3x3.npy"))
	tn, _ := Decode(b)
	if v, _ := tn.Float32s(); v[8] != 8 {
		t.Fatalf("values %v", v)
	}
}

func TestBadArraysRefused(t *testing.T) {
	hdr := func(h string, data int) []byte {
		b := append([]byte("\x93NUMPY\x01\x00"), byte(len(h)), byte(len(h)>>8))
		return append(append(b, h...), make([]byte, data)...)
	}
	for name, b := range map[string][]byte{
		"8 TiB shape":   hdr("{'descr': '<f8', 'fortran_order': False, 'shape': (1048576, 1048576), }", 8),
		"wrapping":      hdr("{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4294967296), }", 8),
		"short data":    hdr("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", 8),
		"big-endian":    hdr("{'descr': '>f4', 'fortran_order': False, 'shape': (1,), }", 4),
		"object dtype":  hdr("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }", 8),
		"fortran":       hdr("{'descr': '<f4', 'fortran_order': True, 'shape': (1,), }", 4),
		"unknown key":   hdr("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1}", 4),
		"header past":   append([]byte("\x93NUMPY\x01\x00\xff\xff"), "{}"...),
		"no magic":      []byte("NUMPY"),
		"negative dim":  hdr("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }", 4),
		"version 9":     append([]byte("\x93NUMPY\x09\x00\x02\x00"), "{}"...),
		"missing shape": hdr("{'descr': '<f4', 'fortran_order': False, }", 4),
	} {
		if _, err := Decode(b); !errors.Is(err, ErrNPY) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func FuzzDecode(f *testing.F) {
	b, _ := os.ReadFile(filepath.Join("..", "..", "testdata", "npy", "f4_3x3.npy"))
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		tn, err := Decode(b)
		if err != nil {
			return
		}
		if int64(len(tn.Data)) != int64(tn.NumElements())*int64(tn.DType.Size()) {
			t.Fatalf("shape %v does not fit %d bytes", tn.Shape, len(tn.Data))
		}
	})
}

// Header is what Encode writes before the data.
func TestHeader(t *testing.T) {
	a := persistor.FromFloat32([]float32{1, 2, 3}, 3)
	h, err := Header(a)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := Encode(a)
	if !bytes.Equal(b, append(h, a.Data...)) || len(h)%64 != 0 {
		t.Fatalf("header %q, encoded %q", h, b)
	}
	if _, err := Header(&persistor.Tensor{DType: persistor.BFloat16, Shape: []int{1}, Data: []byte{0, 0}}); err == nil {
		t.Fatal("a bfloat16 header")
	}
}
