package site

import (
	"bytes"
	"context"
	"encoding/binary"
	"strings"
	"testing"

	"github.com/flarego/flarego/flare/cellnet/cell"
	"github.com/flarego/flarego/flare/cellnet/fobs"
	"github.com/flarego/flarego/flare/cellnet/lobs"
	"github.com/flarego/flarego/flare/cellnet/msgpk"
)

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := msgpk.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func container(main []byte) []byte { return (&lobs.Container{Main: main}).Encode(lobs.V27) }

// hostile are admin requests an attacker who can reach a site's parent
// cell might send: each must get an error reply, not a crash or a hang.
func hostile(t *testing.T) map[string][]byte {
	typed := func(typ, dc string, data any) []byte {
		return container(mustMarshal(t, msgpk.Map{{Key: "__fobs_type__", Value: typ}, {Key: "__fobs_data__", Value: data}, {Key: "__fobs_dc__", Value: dc}}))
	}
	// A 10 GB datum declared, 16 bytes present.
	huge := container(mustMarshal(t, "x"))
	huge = append(huge, lobs.MarkerText, 1)
	huge = binary.BigEndian.AppendUint64(huge, 10<<30)
	huge = append(huge, bytes.Repeat([]byte{7}, 16)...)
	// 100 000 nested one-element arrays.
	deep := append(bytes.Repeat([]byte{0x91}, 100000), 0xc0)
	return map[string][]byte{
		"unknown type":     typed("nvflare.private.evil.Payload", "nvflare.fuel.utils.fobs.decomposer.DictDecomposer", msgpk.Map{}),
		"os.system":        typed("os.system", "nvflare.fuel.utils.fobs.decomposer.DataClassDecomposer", "touch /tmp/pwned"),
		"10 GB datum":      huge,
		"recursion bomb":   container(deep),
		"not LOBS":         []byte("\x64\x00\xff\xff\xff\xff\xff\xff\xff\xff"),
		"not a Message":    container(mustMarshal(t, "hello")),
		"empty":            nil,
		"truncated header": []byte{100, 0, 0},
	}
}

func TestHostileAdminRequests(t *testing.T) {
	s := &Site{Name: "site-1", Workspace: t.TempDir(), jobs: map[string]*job{}}
	for name, payload := range hostile(t) {
		t.Run(name, func(t *testing.T) {
			r := s.admin(context.Background(), nil, &cell.Message{Payload: payload})
			c, err := lobs.Decode(r.Payload, lobs.V27)
			if err != nil {
				t.Fatal(err)
			}
			v, err := fobs.Decode(c, fobs.Options{})
			if err != nil {
				t.Fatal(err)
			}
			m := v.(*fobs.Message)
			if m.Headers.String("_rtnCode") != "_error" || !strings.Contains(m.Body.(string), "cannot read the request") {
				t.Fatalf("reply %+v", m)
			}
		})
	}
}
