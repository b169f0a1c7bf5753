package wire20

import (
	"testing"

	protobuf "google.golang.org/protobuf/proto"

	"github.com/flarego/flarego/flare/internal/flaretest"
	"github.com/flarego/flarego/proto/fedlearn"
)

// The server's codec writes a CurrentTask exactly as protobuf does.
func TestTaskCodecMatchesProtobuf(t *testing.T) {
	for _, f := range []string{"gettask-train.CurrentTask.pb", "gettask-__try_again__.CurrentTask.pb", "pneumonia-gettask-train.CurrentTask.pb"} {
		var ct fedlearn.CurrentTask
		if err := protobuf.Unmarshal(flaretest.Fixture(t, "wire", f), &ct); err != nil {
			t.Fatal(err)
		}
		bs, err := newTaskCodec(nil).Marshal(&ct)
		if err != nil {
			t.Fatal(err)
		}
		var back fedlearn.CurrentTask
		if err := protobuf.Unmarshal(bs.Materialize(), &back); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if !protobuf.Equal(&ct, &back) {
			t.Fatalf("%s: the codec's bytes decode to another message", f)
		}
		want, _ := protobuf.MarshalOptions{Deterministic: true}.Marshal(&ct)
		if len(bs.Materialize()) != len(want) {
			t.Fatalf("%s: %d bytes, protobuf %d", f, len(bs.Materialize()), len(want))
		}
	}
}
