package persistor

import (
	"bytes"
	"testing"
	"time"
)

func FuzzDecodePT(f *testing.F) {
	for _, name := range []string{"sd_small.pt", "sd_small_legacy.pt", "sd_views.pt", "sd_dtypes.pt", "nvflare_ckpt.pt", "sd_module.pt"} {
		f.Add(readFixture(f, "torch", name))
	}
	f.Add(make([]byte, 1024))
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := DecodePT(data)
		if err != nil {
			return
		}
		// Whatever decodes must write back and decode to the same tensors.
		var buf bytes.Buffer
		if err := WritePT(&buf, v, PTOptions{}); err != nil {
			return // e.g. floats in metadata, which torch 1.13 refuses
		}
		if _, err := DecodePT(buf.Bytes()); err != nil {
			t.Fatalf("re-reading what we wrote: %v", err)
		}
	})
}

func FuzzDecrypt(f *testing.F) {
	k := mustKey(f, string(readFixture(f, "fernet", "key.txt")))
	for _, name := range []string{"hello", "empty", "binary256", "fixed_t1700000000_iv0", "rotated_to_key2"} {
		f.Add(readFixture(f, "fernet", "python-tokens", name+".tok"))
	}
	f.Fuzz(func(t *testing.T, tok []byte) {
		a, errA := Decrypt(tok, NoTTL, k)
		b, errB := DecryptFrom(bytes.NewReader(tok), 0, NoTTL, k)
		if (errA == nil) != (errB == nil) || !bytes.Equal(a, b) {
			t.Fatalf("fernet-go path and streaming path disagree: %v / %v", errA, errB)
		}
		if errA == nil {
			_, _ = Decrypt(tok, time.Minute, k)
		}
	})
}
