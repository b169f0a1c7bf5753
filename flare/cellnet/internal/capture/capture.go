// Package capture reads the FOBS payloads of a real NVFlare CellNet
// capture (testdata/cellnet/*.frames) for the tests of the layers above
// the frames: those of plain cell messages, and the reassembled blobs of
// streamed ones, each with its application channel and topic.
package capture

import (
	"testing"

	"github.com/flarego/flarego/flare/cellnet/sfm"
	"github.com/flarego/flarego/flare/internal/flaretest"
)

// Payload is one FOBS payload and where it travelled.
type Payload struct {
	Channel, Topic string
	Data           []byte
}

// Payloads are the FOBS payloads of capture name.
func Payloads(t testing.TB, name string) []Payload {
	t.Helper()
	type key struct {
		conn     int
		toServer bool
		id       int64
	}
	var out []Payload
	streams := map[key][]byte{}
	for i, cf := range flaretest.CellnetFrames(t, name) {
		f, err := sfm.Decode(cf.Data)
		if err != nil {
			t.Fatalf("%s frame %d: %v", name, i, err)
		}
		if f.Type != sfm.TypeData {
			continue
		}
		h := f.Headers
		if h.String("cn__channel") != "sm__STREAM" {
			if h.String("cn__payload_encoding") == "fobs" {
				out = append(out, Payload{h.String("cn__channel"), h.String("cn__topic"), f.Payload})
			}
			continue
		}
		if h.String("cn__topic") != "sm__DATA" || h.String("sm__pe") != "fobs" {
			continue
		}
		id, _ := h.Get("sm__id")
		k := key{cf.Conn, cf.ToServer, id.(int64)}
		streams[k] = append(streams[k], f.Payload...)
		if dt, _ := h.Get("sm__dt"); dt == int64(2) {
			out = append(out, Payload{h.String("sm__ch"), h.String("sm__tp"), streams[k]})
			delete(streams, k)
		}
	}
	return out
}
