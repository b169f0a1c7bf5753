package persistor

import (
	"archive/zip"
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/flarego/flarego/persistor/pickle"
)

func FuzzDecodePT(f *testing.F) {
	for _, name := range []string{"sd_small.pt", "sd_small_legacy.pt", "sd_views.pt", "sd_dtypes.pt", "nvflare_ckpt.pt", "sd_module.pt"} {
		f.Add(readFixture(f, "torch", name))
	}
	f.Add(make([]byte, 1024))
	// The attacks of ptlimits_test.go.
	f.Add(zipPT(f, zip.Store, "a/data.pkl", billionLaughs(80)))
	f.Add(wrappingStridePT(f))
	f.Add(expandedPT(f, 1<<20, 1<<20))
	f.Add(expandedPT(f, 4, 4))
	f.Add(zipPT(f, zip.Store, "a/data.pkl", tensorPickle(f, 4, 0, pickle.Tuple{1 << 40, 1 << 40}, pickle.Tuple{1, 1}), "a/data/0", "0123456789abcdef"))
	f.Add(overlappingPT(f))
	f.Add(rawZip(f, make([]byte, 4<<10), 4<<20, 0))
	f.Add(zipPT(f, zip.Store, "a/data.pkl", "\x80\x02\x8b\x00\x08\x00\x00"+strings.Repeat("Z", 2048)+"."))
	f.Add(zipPT(f, zip.Store, "a/data.pkl", "\x80\x02}q\x00X\x01\x00\x00\x00wq\x01h\x07s."))
	f.Add(legacyPT(f, "0", "0"))
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
