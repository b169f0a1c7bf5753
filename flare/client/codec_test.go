package client

import (
	"testing"

	"github.com/flarego/flarego/flare/internal/flaretest"
	"github.com/flarego/flarego/flare/wire20"
	"github.com/flarego/flarego/proto/fedlearn"
	protobuf "google.golang.org/protobuf/proto"
)

// Our GetTask request carries the same FLContext props as NVFlare's
// (golden GetTask_req.ClientState.bin, made by the 2.0.5 client).
func TestClientStateMatchesNVFlare(t *testing.T) {
	var want fedlearn.ClientState
	if err := protobuf.Unmarshal(flaretest.Fixture(t, "golden", "GetTask_req.ClientState.bin"), &want); err != nil {
		t.Fatal(err)
	}
	wc, err := wire20.DecodeFLContext(want.Context["fl_context"].GetNdarray())
	if err != nil {
		t.Fatal(err)
	}
	c := &Client{Name: "site-1", token: want.Token} // NVFlare leaves client_name empty; the name travels in the context
	got := wire20.ClientState(c.session())
	gc, err := wire20.DecodeFLContext(got.Context["fl_context"].GetNdarray())
	if err != nil {
		t.Fatal(err)
	}
	if got.Meta.GetRunNumber() != want.Meta.GetRunNumber() || got.Meta.GetProject().GetName() != want.Meta.GetProject().GetName() {
		t.Errorf("meta %v, NVFlare's %v", got.Meta, want.Meta)
	}
	if len(gc.Props) != len(wc.Props) {
		t.Fatalf("props %v, NVFlare's %v", gc.Props, wc.Props)
	}
	for _, p := range wc.Props {
		v, ok := gc.Get(p.Name)
		if !ok || v != p.Value {
			t.Errorf("prop %s = %v, NVFlare's %v", p.Name, v, p.Value)
		}
	}
}
