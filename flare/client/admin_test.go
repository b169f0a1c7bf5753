package client

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/internal/flaretest"
	"github.com/flarego/flarego/flare/server"
	"github.com/flarego/flarego/flare/wire20"
	"github.com/flarego/flarego/proto/admin"
	protobuf "google.golang.org/protobuf/proto"
)

// The requests a real NVFlare 2.0.5 server sent on the admin channel get
// the replies the real client sent.
func TestAdminRepliesMatchNVFlare(t *testing.T) {
	ws := t.TempDir()
	c := &Client{Name: "site-1"}
	h := AdminHandler{Workspace: ws, Start: func(dir string) (map[string]flare.Executor, error) { return map[string]flare.Executor{}, nil }}
	st := &adminState{run: -1, workDone: make(chan workResult, 1)}
	for _, pair := range [][2]string{{"0007_Retrieve_resp.bin", "0009_SendReply_req.bin"}, {"0011_Retrieve_resp.bin", "0013_SendReply_req.bin"},
		{"0016_Retrieve_resp.bin", "0017_SendReply_req.bin"}, {"0226_Retrieve_resp.bin", "0233_SendReply_req.bin"}} {
		var msgs admin.Messages
		if err := protobuf.Unmarshal(flaretest.Fixture(t, "captured", pair[0]), &msgs); err != nil {
			t.Fatal(err)
		}
		var want admin.Reply
		if err := protobuf.Unmarshal(flaretest.Fixture(t, "captured", pair[1]), &want); err != nil {
			t.Fatal(err)
		}
		m := msgs.Message[0]
		ctx, cancel := context.WithCancel(context.Background())
		bodyType, body, _, err := c.handleMessage(ctx, m, st, h)
		cancel()
		if err != nil {
			t.Fatalf("%s: %v", m.Topic, err)
		}
		if "reply_"+m.Topic != want.Message.Topic || bodyType != want.Message.BodyType {
			t.Errorf("%s: reply %s/%s, NVFlare's %s/%s", m.Topic, "reply_"+m.Topic, bodyType, want.Message.Topic, want.Message.BodyType)
		}
		if bodyType == "str" && string(body) != string(want.Message.Body) {
			t.Errorf("%s: reply body %q, NVFlare's %q", m.Topic, body, want.Message.Body)
		}
		if bodyType == "bytes" {
			ours, err := wire20.DecodeShareable(body)
			if err != nil {
				t.Fatal(err)
			}
			theirs, err := wire20.DecodeShareable(want.Message.Body)
			if err != nil {
				t.Fatal(err)
			}
			if ours.ReturnCode() != theirs.ReturnCode() {
				t.Errorf("aux reply rc %s, NVFlare's %s", ours.ReturnCode(), theirs.ReturnCode())
			}
		}
	}
	if _, err := os.Stat(filepath.Join(ws, "run_1", "app_site-1", "config", "config_fed_client.json")); err != nil {
		t.Fatalf("deployed app: %v", err)
	}
	// check_status and sys.info answer JSON, as NVFlare's server reads them.
	for _, topic := range []string{flare.TopicCheckStatus, flare.TopicSysInfo} {
		_, body, stop, err := c.handleMessage(context.Background(), &admin.Message{Id: "x", Topic: topic}, st, h)
		var v map[string]any
		if err != nil || stop || json.Unmarshal(body, &v) != nil || len(v) == 0 {
			t.Errorf("%s: %q, %v", topic, body, err)
		}
	}
}

// Our server deploys the app through the admin channel and our client
// runs it, the NVFlare 2.0 way.
func TestDeployAndStartThroughAdminChannel(t *testing.T) {
	p := &flaretest.MemPersistor{Init: flaretest.InitModel()}
	reg := &flare.Registry{Persistors: map[string]func(json.RawMessage) (flare.ModelPersistor, error){
		"test.MemPersistor": func(json.RawMessage) (flare.ModelPersistor, error) { return p, nil }}}
	srv, err := server.New(flaretest.ServerConfig(1, 1, 0), reg)
	if err != nil {
		t.Fatal(err)
	}
	srv.Logf, srv.EndGrace, srv.Wire = t.Logf, 10*time.Second, wire20.ServerWire{} // the client polls the admin channel once a second
	app := t.TempDir()
	os.MkdirAll(filepath.Join(app, "config"), 0o755)
	os.WriteFile(filepath.Join(app, "config", "config_fed_client.json"), []byte(`{"format_version": 2, "executors": []}`), 0o644)
	if err := srv.ServeAppTo(app, "testapp"); err != nil {
		t.Fatal(err)
	}
	lis, _ := net.Listen("tcp", "127.0.0.1:0")
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), lis) }()
	ws := t.TempDir()
	var deployed string
	c := &Client{Name: "site-1", Wire: wire20.Wire{}, Target: lis.Addr().String(), Logf: t.Logf}
	err = c.RunAdmin(context.Background(), AdminHandler{Workspace: ws, Start: func(dir string) (map[string]flare.Executor, error) {
		deployed = dir
		return map[string]flare.Executor{"train": flaretest.AddExecutor{Delta: 1, Steps: 1}}, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(deployed, "config", "config_fed_client.json")); err != nil {
		t.Fatalf("app not deployed: %v", err)
	}
	if len(p.Saved) != 1 {
		t.Fatalf("%d models saved", len(p.Saved))
	}
}
