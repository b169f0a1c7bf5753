package wire20

import (
	"bytes"
	"compress/gzip"
	"testing"

	"google.golang.org/grpc/mem"
	protobuf "google.golang.org/protobuf/proto"

	"github.com/flarego/flarego/proto/fedlearn"
)

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
	c := newTaskCodec(nil)
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
