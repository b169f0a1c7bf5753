package lobs

import (
	"bytes"
	"errors"
	"testing"

	"github.com/flarego/flarego/flare/cellnet/internal/capture"
	"github.com/flarego/flarego/flare/cellnet/msgpk"
)

// Every FOBS payload of real NVFlare 2.8.1 and main runs is a V27
// container whose main body is msgpack, and encodes again to its bytes.
func TestCapturedContainers(t *testing.T) {
	for _, name := range []string{"nvflare-2.8.1", "nvflare-main"} {
		payloads := capture.Payloads(t, name)
		datums := 0
		for i, p := range payloads {
			c, err := Decode(p.Data, V27)
			if err != nil {
				t.Fatalf("%s payload %d: %v", name, i, err)
			}
			if _, err := msgpk.Unmarshal(c.Main); err != nil {
				t.Fatalf("%s payload %d: main body: %v", name, i, err)
			}
			if !bytes.Equal(c.Encode(V27), p.Data) {
				t.Fatalf("%s payload %d: encodes to other bytes", name, i)
			}
			datums += len(c.Datums)
		}
		if len(payloads) < 50 || datums == 0 {
			t.Fatalf("%s: %d payloads, %d datums", name, len(payloads), datums)
		}
		t.Logf("%s: %d FOBS payloads, %d datums", name, len(payloads), datums)
	}
}

func TestV24RoundTrip(t *testing.T) {
	c := &Container{Main: []byte{0x80}, Datums: []Datum{{Marker: MarkerBlob, ID: [16]byte{1}, Value: []byte("abc")}}}
	b := c.Encode(V24)
	got, err := Decode(b, V24)
	if err != nil || !bytes.Equal(got.Main, c.Main) || got.Datum([16]byte{1}) == nil || string(got.Datums[0].Value) != "abc" {
		t.Fatalf("%v %v", got, err)
	}
	if _, err := Decode(b, V27); err == nil {
		t.Error("a V24 container read as V27")
	}
}

func TestBadContainersRefused(t *testing.T) {
	good := (&Container{Main: []byte{0x80}, Datums: []Datum{{Marker: MarkerText, Value: []byte("x")}}}).Encode(V27)
	huge := append([]byte{MarkerBlob, 0}, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}...)
	for name, b := range map[string][]byte{
		"10 GB declared": append(append([]byte(nil), good...), huge...),
		"no main":        good[11:],
		"two mains":      append(append([]byte(nil), good[:11]...), good...),
		"short datum":    append(append([]byte(nil), good[:11]...), MarkerBlob, 0, 0, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3),
		"unknown marker": append(append([]byte(nil), good[:11]...), 7, 0, 0, 0, 0, 0, 0, 0, 0, 0),
		"cut header":     good[:len(good)-20],
		"empty":          {},
	} {
		if _, err := Decode(b, V27); !errors.Is(err, ErrLOBS) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add((&Container{Main: []byte{0x80}, Datums: []Datum{{Marker: MarkerText, Value: []byte("x")}}}).Encode(V27))
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, format := range []Format{V27, V24} {
			c, err := Decode(b, format)
			if err != nil {
				continue
			}
			if _, err := Decode(c.Encode(format), format); err != nil {
				t.Fatalf("re-encoded container does not decode: %v", err)
			}
		}
	})
}
