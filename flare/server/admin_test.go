package server

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/internal/flaretest"
	"github.com/flarego/flarego/proto/admin"
	"github.com/flarego/flarego/proto/fedlearn"
)

// A client that registers again and again (a restart loop, or a peer
// without TLS doing it on purpose) leaves nothing of its old tokens in
// the admin channel's queue.
func TestAdminQueueForgetsOldTokens(t *testing.T) {
	srv, _ := newTestServer(t, flaretest.ServerConfig(1, 1, 0), &flaretest.MemPersistor{Init: flaretest.InitModel()})
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
	m := flare.NewAdminRequest(flare.TopicCheckStatus, "1", nil)
	q.send([]string{"old", "live"}, m)
	other := flare.NewAdminRequest(flare.TopicCheckStatus, "1", nil)
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
