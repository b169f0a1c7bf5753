package wire20

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"

	"github.com/flarego/flarego/flare/internal/flaretest"
	"github.com/flarego/flarego/proto/fedlearn"
)

// Calls to a method the server does not serve never reach a handler, so
// gRPC sends no stats.End for them: they must take no slot. Before, eight
// tokenless calls to an unknown method held the tokenless share of the
// "other" pool for good and Register then waited at the gate.
func TestUnknownMethodHoldsNoGateSlot(t *testing.T) {
	srv, _ := newTestServer(t, flaretest.ServerConfig(1, 1, 0), &flaretest.MemPersistor{Init: flaretest.InitModel()})
	w := &spyWire{tune: func(g *uploadGate) { g.wait = time.Second }}
	srv.Wire = w
	addr, _ := serveOn(t, srv)
	defer srv.Stop()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for i := 0; i < 2*otherSlots; i++ {
		err := conn.Invoke(context.Background(), "/fedlearn.FederatedTraining/Nope", &fedlearn.Token{}, &fedlearn.Token{})
		if status.Code(err) != codes.Unimplemented {
			t.Fatalf("unknown method: %v", err)
		}
	}
	if n := len(w.gate.Load().other.all); n != 0 {
		t.Errorf("%d slot(s) of the other pool held after the unknown calls", n)
	}
	_, err = fedlearn.NewFederatedTrainingClient(conn).Register(context.Background(), &fedlearn.ClientLogin{ClientName: "site-1"})
	if err != nil {
		t.Fatalf("Register after unknown calls: %v", err)
	}
}

// A slot taken is given back when the stream's context ends, even if no
// stats.End ever comes (a stream gRPC drops before any handler runs).
func TestGateSlotFreedWhenStreamEndsWithoutEnd(t *testing.T) {
	g := newUploadGate()
	for _, method := range []string{RegisterMethod, GetTaskMethod, SubmitMethod} {
		ctx, cancel := context.WithCancel(context.Background())
		if _, err := g.acquire(ctx, &tap.Info{FullMethodName: method, Header: metadata.MD{}}); err != nil {
			t.Fatal(err)
		}
		cancel()
		deadline := time.Now().Add(2 * time.Second)
		for len(g.other.all)+len(g.task.all)+len(g.submit.all)+len(g.other.anon)+len(g.task.anon)+len(g.submit.anon) != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("%s: slot still held after its context ended", method)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// A client over its per-token share is told Unavailable, which the client
// retries, not ResourceExhausted, which it took as the end.
func TestPerTokenLimitIsRetried(t *testing.T) {
	g := newUploadGate()
	g.known = func(string) bool { return true }
	md := metadata.Pairs(TokenHeader, "tok")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := 0; i < perTokenSlots; i++ {
		if _, err := g.acquire(ctx, &tap.Info{FullMethodName: GetTaskMethod, Header: md}); err != nil {
			t.Fatal(err)
		}
	}
	_, err := g.acquire(ctx, &tap.Info{FullMethodName: GetTaskMethod, Header: md})
	// Unavailable is what the client retries (client.TestTransientErrors).
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("call over the per-token share: %v", err)
	}
}
