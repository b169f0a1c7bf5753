package flare

import (
	"bytes"
	"compress/gzip"
	"testing"

	"google.golang.org/grpc/mem"
	protobuf "google.golang.org/protobuf/proto"

	"github.com/flarego/flarego/persistor"
	"github.com/flarego/flarego/persistor/pickle"
	"github.com/flarego/flarego/proto/fedlearn"
)

func FuzzDecodeShareable(f *testing.F) {
	for _, name := range []string{"shareable_dxo_f32_3x3.pkl", "shareable_dxo_bare.pkl", "shareable_empty.pkl", "fl_context_client.pkl",
		"shareable_validate_task.pkl", "shareable_metrics_result.pkl"} {
		f.Add(fixture(f, "golden", name))
	}
	// Declared sizes against the bytes present: an 8 TiB shape, a shape
	// whose byte size wraps uint64, a scalar of the wrong length.
	f.Add(numpyShapeBomb(f))
	f.Add(shapedArray(f, persistor.Float64, []int{1 << 40, 1 << 40}, 8))
	f.Add(shapedArray(f, persistor.Uint8, []int{1 << 30, 1 << 30, 1 << 30}, 1))
	f.Add(shareablePickle([]byte("cnumpy\ndtype\nX\x02\x00\x00\x00f8\x85Rcnumpy.core.multiarray\nscalar\nq\x01h\x00C\x03abc\x86R")))
	// Built in a few hundred bytes, standing for 2^80 values or millions
	// of digits.
	f.Add(billionLaughs(80))
	f.Add(bigLong4(1 << 20))
	f.Add(bigDecimalLong(100_000))
	f.Fuzz(func(t *testing.T, data []byte) {
		if s, err := DecodeShareable(data); err == nil {
			if _, err := EncodeShareable(s); err != nil {
				t.Logf("re-encode: %v", err)
			}
		}
		DecodeFLContext(data)
	})
}

// shapedArray is a WEIGHTS Shareable whose one array declares shape and
// holds n bytes.
func shapedArray(t testing.TB, dt persistor.DType, shape []int, n int) []byte {
	sh := NewShareable()
	sh.DXO = &DXO{Kind: KindWeights, Meta: &pickle.Dict{}, Data: []NamedArray{{"w", &persistor.Tensor{DType: dt, Shape: shape, Data: make([]byte, n)}}}}
	b, err := EncodeShareable(sh)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The server's request codec: plain or gzip protobuf, held to each
// message's limit before it is decompressed further or decoded.
func FuzzRequestCodec(f *testing.F) {
	login, _ := protobuf.Marshal(&fedlearn.ClientLogin{ClientName: "site-1"})
	f.Add(login)
	f.Add(gzipped(login))
	f.Add(gzipped(bytes.Repeat([]byte{0x0a, 0xff, 0xff, 0x03}, 1000))) // declared lengths far past the data
	big, _ := protobuf.Marshal(&fedlearn.ClientLogin{ClientName: string(bytes.Repeat([]byte("a"), 200<<10))})
	f.Add(gzipped(big))
	f.Add([]byte{0x1f, 0x8b, 0x08, 0x00})
	c := newTaskCodec()
	f.Fuzz(func(t *testing.T, data []byte) {
		var m fedlearn.ClientLogin
		if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(data)}, &m); err == nil && len(m.ClientName) > maxSmallRequestBytes {
			t.Fatalf("a %d-byte name got through", len(m.ClientName))
		}
		var cs fedlearn.Contribution
		c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(data)}, &cs)
	})
}

func gzipped(p []byte) []byte {
	var b bytes.Buffer
	w := gzip.NewWriter(&b)
	w.Write(p)
	w.Close()
	return b.Bytes()
}
