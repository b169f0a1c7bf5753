package flare

import "testing"

func FuzzDecodeShareable(f *testing.F) {
	for _, name := range []string{"shareable_dxo_f32_3x3.pkl", "shareable_dxo_bare.pkl", "shareable_empty.pkl", "fl_context_client.pkl",
		"shareable_validate_task.pkl", "shareable_metrics_result.pkl"} {
		f.Add(fixture(f, "golden", name))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if s, err := DecodeShareable(data); err == nil {
			if _, err := EncodeShareable(s); err != nil {
				t.Logf("re-encode: %v", err)
			}
		}
		DecodeFLContext(data)
	})
}
