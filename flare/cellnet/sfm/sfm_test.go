package sfm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/flarego/flarego/flare/cellnet/msgpk"
	"github.com/flarego/flarego/flare/internal/flaretest"
)

// Every frame of real NVFlare 2.8.1 and main (2.9.0dev) runs decodes, and
// encodes again to the same bytes.
func TestCapturedFramesRoundTrip(t *testing.T) {
	for _, name := range []string{"nvflare-2.8.1", "nvflare-main"} {
		frames := flaretest.CellnetFrames(t, name)
		types := map[string]int{}
		for i, cf := range frames {
			f, err := Decode(cf.Data)
			if err != nil {
				t.Fatalf("%s frame %d: %v", name, i, err)
			}
			types[TypeName(f.Type)]++
			b, err := f.Encode()
			if err != nil {
				t.Fatalf("%s frame %d: encode: %v", name, i, err)
			}
			if !bytes.Equal(b, cf.Data) {
				t.Fatalf("%s frame %d (%s): encodes to other bytes", name, i, TypeName(f.Type))
			}
			if f.Type == TypeHello || f.Type == TypeReady {
				v, err := msgpk.Unmarshal(f.Payload)
				m, _ := v.(msgpk.Map)
				if err != nil || m.String("endpoint_name") == "" {
					t.Fatalf("%s frame %d: %s payload %v %v", name, i, TypeName(f.Type), v, err)
				}
			}
			if f.Type == TypeData && f.AppID == AppCell && f.Headers.String("cn__channel") == "" {
				t.Fatalf("%s frame %d: DATA without cn__channel: %v", name, i, f.Headers)
			}
		}
		if types["HELLO"] == 0 || types["READY"] == 0 || types["DATA"] < 100 {
			t.Fatalf("%s: frame types %v", name, types)
		}
		t.Logf("%s: %d frames %v", name, len(frames), types)
	}
}

func TestBadFramesRefused(t *testing.T) {
	good, _ := (&Frame{Type: TypeData, AppID: AppCell, Headers: msgpk.Map{{Key: "cn__channel", Value: "task"}}, Payload: []byte("x")}).Encode()
	mut := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	for name, b := range map[string][]byte{
		"short":          good[:10],
		"length too big": mut(func(b []byte) []byte { binary.BigEndian.PutUint32(b, 1<<31); return b }),
		"length small":   mut(func(b []byte) []byte { binary.BigEndian.PutUint32(b, 17); return b }),
		"headers past":   mut(func(b []byte) []byte { binary.BigEndian.PutUint16(b[4:], 0xffff); return b }),
		"type 9":         mut(func(b []byte) []byte { b[6] = 9; return b }),
		"headers a list": mut(func(b []byte) []byte { b[16] = 0x91; return b }),
	} {
		if _, err := Decode(b); !errors.Is(err, ErrFrame) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func FuzzDecode(f *testing.F) {
	for i, cf := range flaretest.CellnetFrames(f, "nvflare-2.8.1") {
		if i%8 == 0 {
			f.Add(cf.Data)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, err := Decode(b)
		if err != nil {
			return
		}
		out, err := fr.Encode()
		if err != nil {
			t.Fatalf("decoded frame does not encode: %v", err)
		}
		if _, err := Decode(out); err != nil {
			t.Fatalf("re-encoded frame does not decode: %v", err)
		}
	})
}
