package wire20

import (
	"testing"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/internal/flaretest"
	"github.com/flarego/flarego/persistor"
	"github.com/flarego/flarego/persistor/pickle"
)

func FuzzDecodeShareable(f *testing.F) {
	for _, name := range []string{"shareable_dxo_f32_3x3.pkl", "shareable_dxo_bare.pkl", "shareable_empty.pkl", "fl_context_client.pkl",
		"shareable_validate_task.pkl", "shareable_metrics_result.pkl"} {
		f.Add(flaretest.Fixture(f, "golden", name))
	}
	// Declared sizes against the bytes present: an 8 TiB shape, a shape
	// whose byte size wraps uint64, a scalar of the wrong length.
	f.Add(flaretest.NumpyShapeBomb(f, EncodeShareable))
	f.Add(shapedArray(f, persistor.Float64, []int{1 << 40, 1 << 40}, 8))
	f.Add(shapedArray(f, persistor.Uint8, []int{1 << 30, 1 << 30, 1 << 30}, 1))
	f.Add(flaretest.ShareablePickle([]byte("cnumpy\ndtype\nX\x02\x00\x00\x00f8\x85Rcnumpy.core.multiarray\nscalar\nq\x01h\x00C\x03abc\x86R")))
	// Built in a few hundred bytes, standing for 2^80 values or millions
	// of digits.
	f.Add(flaretest.BillionLaughs(80))
	f.Add(flaretest.BigLong4(1 << 20))
	f.Add(flaretest.BigDecimalLong(100_000))
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
	sh := flare.NewShareable()
	sh.DXO = &flare.DXO{Kind: flare.KindWeights, Meta: &pickle.Dict{}, Data: []flare.NamedArray{{Name: "w", Array: &persistor.Tensor{DType: dt, Shape: shape, Data: make([]byte, n)}}}}
	b, err := EncodeShareable(sh)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
