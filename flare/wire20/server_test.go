package wire20

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/client"
	"github.com/flarego/flarego/flare/internal/flaretest"
	"github.com/flarego/flarego/flare/server"
)

// servers for the wire's tests: flare/server's one-job server, served by a
// spyWire.

// newTestServer is a one-job server over p whose log is kept.
func newTestServer(t *testing.T, cfg *flare.ServerConfig, p *flaretest.MemPersistor) (*server.Server, *flaretest.Log) {
	t.Helper()
	srv, err := server.New(cfg, flaretest.Registry(p))
	if err != nil {
		t.Fatal(err)
	}
	log := &flaretest.Log{T: t}
	srv.Logf = log.Logf
	return srv, log
}

// spyWire serves as ServerWire does, its gate adjusted by tune, and keeps
// the gate and the handler it serves for the test to look at.
type spyWire struct {
	ServerWire
	tune       func(*uploadGate)
	gate       atomic.Pointer[uploadGate]
	handler    atomic.Pointer[flare.ServerHandler]
	registered atomic.Int32 // registrations the handler took
}

func (w *spyWire) Serve(ctx context.Context, lis net.Listener, h flare.ServerHandler) error {
	w.handler.Store(&h)
	sw := w.ServerWire
	sw.tune = func(g *uploadGate) {
		if w.tune != nil {
			w.tune(g)
		}
		w.gate.Store(g)
	}
	return sw.Serve(ctx, lis, spyHandler{h, w})
}

type spyHandler struct {
	flare.ServerHandler
	w *spyWire
}

func (h spyHandler) Register(ctx context.Context, r flare.Registration) (string, error) {
	tok, err := h.ServerHandler.Register(ctx, r)
	if err == nil {
		h.w.registered.Add(1)
	}
	return tok, err
}

// serveOn serves srv on a loopback port, with a plain spyWire unless
// srv.Wire is set.
func serveOn(t *testing.T, srv *server.Server) (string, chan error) {
	t.Helper()
	srv.EndGrace = time.Second
	if srv.Wire == nil {
		srv.Wire = &spyWire{}
	}
	lis := flaretest.Listen(t)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), lis) }()
	return lis.Addr().String(), done
}

// runToEnd runs the clients until the run ends, then waits for the
// server; any error fails the test.
func runToEnd(t *testing.T, done chan error, clients ...*client.Client) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, len(clients))
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- c.Run(context.Background())
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// Every call after Register carries the client's token in its metadata (as
// NVFlare's secure-mode client sends it), so the server's gate counts a
// registered client as one before its call takes a slot.
func TestClientSendsTokenInMetadata(t *testing.T) {
	var mu sync.Mutex
	seen := map[string]int{} // method → calls whose metadata token the server knows
	w := &spyWire{}
	record := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		if tok := TokenFromMetadata(md); tok != "" && (*w.handler.Load()).KnownToken(tok) {
			mu.Lock()
			seen[info.FullMethod]++
			mu.Unlock()
		}
		return handler(ctx, req)
	}
	srv, _ := newTestServer(t, flaretest.ServerConfig(1, 1, 0), &flaretest.MemPersistor{Init: flaretest.InitModel()})
	w.ServerOptions = append(w.ServerOptions, grpc.ChainUnaryInterceptor(record))
	srv.Wire = w
	addr, done := serveOn(t, srv)
	runToEnd(t, done, &client.Client{Name: "site-1", Wire: Wire{}, Target: addr, Tasks: map[string]flare.Executor{"train": flaretest.AddExecutor{Delta: 1, Steps: 1}}, Logf: t.Logf})
	mu.Lock()
	defer mu.Unlock()
	if seen[GetTaskMethod] == 0 || seen[SubmitMethod] == 0 {
		t.Fatalf("calls with a known metadata token: %v", seen)
	}
}

// The runtime's refusals reach the client as the gRPC codes NVFlare's
// server gives, with the runtime's text; an error without a kind is
// Internal.
func TestHandlerErrorCodes(t *testing.T) {
	for kind, want := range map[flare.CallErrorKind]codes.Code{flare.Invalid: codes.InvalidArgument, flare.Denied: codes.PermissionDenied,
		flare.Exhausted: codes.ResourceExhausted, flare.UnknownToken: codes.Unauthenticated, flare.Unavailable: codes.Unavailable} {
		err := statusOf(fmt.Errorf("wrapped: %w", &flare.CallError{Kind: kind, Err: errors.New("why")}))
		if st := status.Convert(err); st.Code() != want || st.Message() != "wrapped: why" {
			t.Errorf("kind %d: %v, want %v", kind, err, want)
		}
	}
	if st := status.Convert(statusOf(errors.New("broken"))); st.Code() != codes.Internal || st.Message() != "broken" {
		t.Errorf("plain error: %v", st)
	}
	if statusOf(nil) != nil {
		t.Error("nil error")
	}
}
