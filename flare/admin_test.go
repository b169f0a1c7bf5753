package flare

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	protobuf "google.golang.org/protobuf/proto"

	"github.com/flarego/flarego/proto/admin"
	"github.com/flarego/flarego/proto/fedlearn"
)

// The requests a real NVFlare 2.0.5 server sent on the admin channel get
// the replies the real client sent.
func TestAdminRepliesMatchNVFlare(t *testing.T) {
	ws := t.TempDir()
	c := &Client{Name: "site-1"}
	h := AdminHandler{Workspace: ws, Start: func(dir string) (map[string]Executor, error) { return map[string]Executor{}, nil }}
	st := &adminState{run: -1, workDone: make(chan workResult, 1)}
	for _, pair := range [][2]string{{"0007_Retrieve_resp.bin", "0009_SendReply_req.bin"}, {"0011_Retrieve_resp.bin", "0013_SendReply_req.bin"},
		{"0016_Retrieve_resp.bin", "0017_SendReply_req.bin"}, {"0226_Retrieve_resp.bin", "0233_SendReply_req.bin"}} {
		var msgs admin.Messages
		if err := protobuf.Unmarshal(fixture(t, "captured", pair[0]), &msgs); err != nil {
			t.Fatal(err)
		}
		var want admin.Reply
		if err := protobuf.Unmarshal(fixture(t, "captured", pair[1]), &want); err != nil {
			t.Fatal(err)
		}
		m := msgs.Message[0]
		ctx, cancel := context.WithCancel(context.Background())
		bodyType, body, _, err := c.handleAdmin(ctx, m, st, h)
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
			ours, err := DecodeShareable(body)
			if err != nil {
				t.Fatal(err)
			}
			theirs, err := DecodeShareable(want.Message.Body)
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
	for _, topic := range []string{TopicCheckStatus, TopicSysInfo} {
		_, body, stop, err := c.handleAdmin(context.Background(), &admin.Message{Id: "x", Topic: topic}, st, h)
		var v map[string]any
		if err != nil || stop || json.Unmarshal(body, &v) != nil || len(v) == 0 {
			t.Errorf("%s: %q, %v", topic, body, err)
		}
	}
}

func TestPlaintextCodeIsReported(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "custom"), 0o755)
	os.WriteFile(filepath.Join(dir, "custom", "network.json.enc"), []byte("gAAAAABfake"), 0o644)
	os.WriteFile(filepath.Join(dir, "custom", "__init__.py"), []byte(""), 0o644)
	if got := PlaintextCode(dir); len(got) != 0 {
		t.Fatalf("reported %v", got)
	}
	os.WriteFile(filepath.Join(dir, "custom", "network.py"), []byte("class PneumoniaModel: pass"), 0o644)
	if got := PlaintextCode(dir); len(got) != 1 || got[0] != filepath.Join("custom", "network.py") {
		t.Fatalf("reported %v", got)
	}
}

func TestUnzipAppRefusesEscapes(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "app", "config"), 0o755)
	os.WriteFile(filepath.Join(dir, "app", "config", "x.json"), []byte("{}"), 0o644)
	z, err := ZipApp(filepath.Join(dir, "app"))
	if err != nil {
		t.Fatal(err)
	}
	if err := UnzipApp(z, filepath.Join(dir, "out")); err != nil {
		t.Fatal(err)
	}
	evil := zipPT(t, "../evil.txt", "x")
	if err := UnzipApp(evil, filepath.Join(dir, "out2")); err == nil {
		t.Fatal("an entry outside the app folder was written")
	}
	if _, err := os.Stat(filepath.Join(dir, "evil.txt")); err == nil {
		t.Fatal("evil.txt written")
	}
}

// Our server deploys the app through the admin channel and our client
// runs it, the NVFlare 2.0 way.
func TestDeployAndStartThroughAdminChannel(t *testing.T) {
	p := &memPersistor{init: initModel()}
	reg := &Registry{Persistors: map[string]func(json.RawMessage) (ModelPersistor, error){
		"test.MemPersistor": func(json.RawMessage) (ModelPersistor, error) { return p, nil }}}
	srv, err := NewServer(testServerConfig(1, 1, 0), reg)
	if err != nil {
		t.Fatal(err)
	}
	srv.Logf, srv.EndGrace = t.Logf, 10*time.Second // the client polls the admin channel once a second
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
	c := &Client{Name: "site-1", Target: lis.Addr().String(), Logf: t.Logf}
	err = c.RunAdmin(context.Background(), AdminHandler{Workspace: ws, Start: func(dir string) (map[string]Executor, error) {
		deployed = dir
		return map[string]Executor{"train": addExecutor{delta: 1, steps: 1}}, nil
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
	if len(p.saved) != 1 {
		t.Fatalf("%d models saved", len(p.saved))
	}
}

func zipPT(t testing.TB, name, content string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	w, _ := zw.Create(name)
	w.Write([]byte(content))
	zw.Close()
	return buf.Bytes()
}

// A client that registers again and again (a restart loop, or a peer
// without TLS doing it on purpose) leaves nothing of its old tokens in
// the admin channel's queue.
func TestAdminQueueForgetsOldTokens(t *testing.T) {
	srv, _ := newTestServer(t, testServerConfig(1, 1, 0), &memPersistor{init: initModel()})
	app := t.TempDir()
	os.MkdirAll(filepath.Join(app, "config"), 0o755)
	os.WriteFile(filepath.Join(app, "config", "config_fed_client.json"), []byte(`{"format_version": 2, "executors": []}`), 0o644)
	if err := srv.ServeAppTo(app, "testapp"); err != nil {
		t.Fatal(err)
	}
	addr, _ := serveOn(t, srv)
	defer srv.Stop()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fl, ac := fedlearn.NewFederatedTrainingClient(conn), admin.NewAdminCommunicatingClient(conn)
	for i := 0; i < 50; i++ {
		reg, err := fl.Register(context.Background(), &fedlearn.ClientLogin{ClientName: "site-1"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ac.Retrieve(context.Background(), &admin.Client{ClientName: reg.Token}); err != nil {
			t.Fatal(err)
		}
	}
	q := &srv.admin
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.polled) != 1 || len(q.served) != 1 || len(q.sent) > 3 || len(q.pending) > 1 {
		t.Fatalf("after 50 registrations the queue holds %d polled, %d served, %d sent, %d pending tokens", len(q.polled), len(q.served), len(q.sent), len(q.pending))
	}
}

// A request in flight when its client is forgotten (dropped, registered
// again) leaves no key behind once the request ends.
func TestAdminQueueCancelAfterForgetLeavesNoKey(t *testing.T) {
	var q adminQueue
	m := newAdminMessage(TopicCheckStatus, "1", nil)
	q.send([]string{"old", "live"}, m)
	other := newAdminMessage(TopicCheckStatus, "1", nil)
	q.send([]string{"live"}, other)
	q.forget("old")
	q.cancel([]string{"old", "live"}, m)
	q.mu.Lock()
	if _, ok := q.pending["old"]; ok {
		t.Error("the forgotten token is a key of pending again")
	}
	if got := q.pending["live"]; len(got) != 1 || got[0] != other {
		t.Errorf("the live token's other request: %v", got)
	}
	q.mu.Unlock()
	q.cancel([]string{"live"}, other)
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.pending) != 0 || len(q.waiters) != 0 {
		t.Errorf("after every request ended: %d pending, %d waiters", len(q.pending), len(q.waiters))
	}
}
