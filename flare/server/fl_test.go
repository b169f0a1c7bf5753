package server

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	grpcgzip "google.golang.org/grpc/encoding/gzip"
	"google.golang.org/grpc/status"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/client"
	"github.com/flarego/flarego/flare/internal/flaretest"
	"github.com/flarego/flarego/flare/wire20"
	"github.com/flarego/flarego/internal/testpki"
	"github.com/flarego/flarego/persistor"
	"github.com/flarego/flarego/proto/fedlearn"
)

func startServer(t *testing.T, cfg *flare.ServerConfig, p *flaretest.MemPersistor) (*Server, string, chan error) {
	t.Helper()
	reg := &flare.Registry{Persistors: map[string]func(json.RawMessage) (flare.ModelPersistor, error){
		"test.MemPersistor": func(json.RawMessage) (flare.ModelPersistor, error) { return p, nil }}}
	srv, err := New(cfg, reg)
	if err != nil {
		t.Fatal(err)
	}
	srv.Logf = t.Logf
	addr, done := serveOn(t, srv)
	return srv, addr, done
}

// serveOn serves srv on a loopback port, over NVFlare 2.0's gRPC unless
// srv.Wire is set.
func serveOn(t *testing.T, srv *Server) (string, chan error) {
	t.Helper()
	srv.EndGrace = time.Second
	if srv.Wire == nil {
		srv.Wire = wire20.ServerWire{}
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
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

func TestScatterAndGatherWeightedMean(t *testing.T) {
	p := &flaretest.MemPersistor{Init: flaretest.InitModel()}
	_, addr, done := startServer(t, flaretest.ServerConfig(2, 2, 0), p)
	var clients []*client.Client
	for i, ex := range []flaretest.AddExecutor{{Delta: 1, Steps: 1}, {Delta: 4, Steps: 3}} {
		clients = append(clients, &client.Client{Name: fmt.Sprintf("site-%d", i+1), Wire: wire20.Wire{Gzip: i == 0}, Target: addr, Tasks: map[string]flare.Executor{"train": ex}, Logf: t.Logf})
	}
	runToEnd(t, done, clients...)
	if len(p.Saved) != 2 {
		t.Fatalf("%d models saved, want one per round", len(p.Saved))
	}
	// Each round adds the weighted mean of the deltas: (1·1 + 3·4)/4 = 3.25.
	for r, want := range [][]float64{{4.25, 5.25, 6.25, 7.25}, {7.5, 8.5, 9.5, 10.5}} {
		w, _ := p.Saved[r].Get("w").Float32s()
		for i := range want {
			if math.Abs(float64(w[i])-want[i]) > 1e-6 {
				t.Fatalf("round %d: w = %v, want %v", r, w, want)
			}
		}
	}
	if nb := p.Saved[1].Get("bn.num_batches_tracked"); nb.DType != persistor.Float64 {
		t.Errorf("num_batches_tracked aggregated as %s (NVFlare makes it float64)", nb.DType)
	}
}

// A client that dies mid-round does not stop a round that has min_clients.
func TestRoundCompletesWithoutDeadClient(t *testing.T) {
	p := &flaretest.MemPersistor{Init: flaretest.InitModel()}
	_, addr, done := startServer(t, flaretest.ServerConfig(1, 1, 0.5), p)
	ctx, kill := context.WithCancel(context.Background())
	slow := &client.Client{Name: "slow", Wire: wire20.Wire{}, Target: addr, Tasks: map[string]flare.Executor{"train": flaretest.AddExecutor{Delta: 100, Steps: 1, Delay: 2 * time.Second}}}
	go slow.Run(ctx)
	time.Sleep(200 * time.Millisecond)
	kill() // killed while training
	fast := &client.Client{Name: "fast", Wire: wire20.Wire{}, Target: addr, Tasks: map[string]flare.Executor{"train": flaretest.AddExecutor{Delta: 1, Steps: 1}}}
	if err := fast.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	w, _ := p.Saved[0].Get("w").Float32s()
	if w[0] != 2 {
		t.Fatalf("w = %v: the dead client's result leaked in", w)
	}
}

// A hostile pickle is refused, nothing runs, and the connection and the
// server go on working.
func TestHostileResultRejected(t *testing.T) {
	p := &flaretest.MemPersistor{Init: flaretest.InitModel()}
	srv, addr, done := startServer(t, flaretest.ServerConfig(1, 1, 0), p)
	defer srv.Stop()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fl := fedlearn.NewFederatedTrainingClient(conn)
	reg, err := fl.Register(context.Background(), &fedlearn.ClientLogin{ClientName: "evil"})
	if err != nil {
		t.Fatal(err)
	}
	evil := []byte("\x80\x02cos\nsystem\nX\x05\x00\x00\x00touch\x85R.")
	_, err = fl.SubmitUpdate(context.Background(), &fedlearn.Contribution{Client: &fedlearn.ClientState{Token: reg.Token, ClientName: "evil"},
		Data: &fedlearn.ModelData{Params: map[string]*fedlearn.NDArray{"data": {Ndarray: evil}}}})
	if err == nil {
		t.Fatal("hostile pickle accepted")
	}
	t.Logf("refused: %v", err)
	if _, err := fl.Heartbeat(context.Background(), &fedlearn.Token{Token: reg.Token}); err != nil {
		t.Fatalf("connection broken after a hostile message: %v", err)
	}
	if _, err := fl.GetTask(context.Background(), &fedlearn.ClientState{Token: "forged"}); err == nil {
		t.Fatal("forged token accepted")
	}
	// Every answer carries an FLContext: NVFlare's client unpickles it even
	// from __try_again__ and __end_run__.
	for i := 0; i < 2; i++ {
		ct, err := fl.GetTask(context.Background(), &fedlearn.ClientState{Token: reg.Token, ClientName: "evil"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := wire20.DecodeFLContext(ct.Data.Params["fl_context"].GetNdarray()); err != nil {
			t.Fatalf("%s answer: fl_context: %v", ct.TaskName, err)
		}
	}
	good := &client.Client{Name: "good", Wire: wire20.Wire{}, Target: addr, Tasks: map[string]flare.Executor{"train": flaretest.AddExecutor{Delta: 1, Steps: 1}}}
	if err := good.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// The server goes away and comes back (with a fresh state, as a restarted
// process does): the client keeps retrying, registers again when the new
// server does not know its token, and finishes the run.
func TestClientSurvivesServerRestart(t *testing.T) {
	p := &flaretest.MemPersistor{Init: flaretest.InitModel()}
	cfg := flaretest.ServerConfig(2, 1, 0) // waits for a second client that never comes
	reg := &flare.Registry{Persistors: map[string]func(json.RawMessage) (flare.ModelPersistor, error){
		"test.MemPersistor": func(json.RawMessage) (flare.ModelPersistor, error) { return p, nil }}}
	first, err := New(cfg, reg)
	if err != nil {
		t.Fatal(err)
	}
	first.Wire = wire20.ServerWire{}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	go first.Serve(context.Background(), lis)

	c := &client.Client{Name: "site-1", Wire: wire20.Wire{}, Target: addr, Tasks: map[string]flare.Executor{"train": flaretest.AddExecutor{Delta: 1, Steps: 1}}, Logf: t.Logf, GiveUp: 20 * time.Second}
	done := make(chan error, 1)
	go func() { done <- c.Run(context.Background()) }()
	time.Sleep(500 * time.Millisecond) // registered, result submitted, waiting for the round
	first.Stop()

	second, err := New(flaretest.ServerConfig(1, 1, 0), reg)
	if err != nil {
		t.Fatal(err)
	}
	second.Logf, second.EndGrace, second.Wire = t.Logf, time.Second, wire20.ServerWire{}
	var lis2 net.Listener
	for i := 0; i < 50; i++ { // the port is free once the first server has let go
		if lis2, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if lis2 == nil {
		t.Fatal(err)
	}
	srvDone := make(chan error, 1)
	go func() { srvDone <- second.Serve(context.Background(), lis2) }()
	if err := <-done; err != nil {
		t.Fatalf("client: %v", err)
	}
	if err := <-srvDone; err != nil {
		t.Fatal(err)
	}
	if len(p.Saved) != 1 {
		t.Fatalf("%d models saved", len(p.Saved))
	}
}

// A client that registered and went silent is dropped after the heart-beat
// timeout, so the round need not wait for it.
func TestSilentClientDropped(t *testing.T) {
	p := &flaretest.MemPersistor{Init: flaretest.InitModel()}
	cfg := flaretest.ServerConfig(1, 1, 30) // would wait 30 s for a second result
	reg := &flare.Registry{Persistors: map[string]func(json.RawMessage) (flare.ModelPersistor, error){
		"test.MemPersistor": func(json.RawMessage) (flare.ModelPersistor, error) { return p, nil }}}
	srv, err := New(cfg, reg)
	if err != nil {
		t.Fatal(err)
	}
	srv.Logf, srv.EndGrace, srv.HeartBeatTimeout, srv.Wire = t.Logf, time.Second, 300*time.Millisecond, wire20.ServerWire{}
	lis, _ := net.Listen("tcp", "127.0.0.1:0")
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), lis) }()
	conn, _ := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	defer conn.Close()
	if _, err := fedlearn.NewFederatedTrainingClient(conn).Register(context.Background(), &fedlearn.ClientLogin{ClientName: "ghost"}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	c := &client.Client{Name: "live", Wire: wire20.Wire{}, Target: lis.Addr().String(), Tasks: map[string]flare.Executor{"train": flaretest.AddExecutor{Delta: 1, Steps: 1}}, Heartbeat: 100 * time.Millisecond}
	if err := c.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("round took %s: the silent client was not dropped", d)
	}
}

// A result larger than its limit (for this 4-parameter model, the 16 MiB
// floor) is refused with a clear error; the connection and the run go on.
// (It goes gzip-compressed, so that it fits the connection's read credit:
// uncompressed, the connection is cut, TestUncompressedOversizedRequestCutOff.)
func TestOversizedResultRejected(t *testing.T) {
	big := persistor.NewStateDict()
	big.Set("w", persistor.FromFloat32(make([]float32, 5<<20), 5<<20)) // 20 MiB
	p := &flaretest.MemPersistor{Init: flaretest.InitModel()}
	srv, addr, done := startServer(t, flaretest.ServerConfig(1, 1, 0), p)
	defer srv.Stop()
	conn, _ := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.UseCompressor(grpcgzip.Name)))
	defer conn.Close()
	fl := fedlearn.NewFederatedTrainingClient(conn)
	reg, err := fl.Register(context.Background(), &fedlearn.ClientLogin{ClientName: "big"})
	if err != nil {
		t.Fatal(err)
	}
	sh := flare.NewShareable()
	sh.DXO = flare.WeightsDXO(big, nil)
	data, _ := wire20.EncodeShareable(sh)
	_, err = fl.SubmitUpdate(context.Background(), &fedlearn.Contribution{Client: &fedlearn.ClientState{Token: reg.Token},
		Data: &fedlearn.ModelData{Params: map[string]*fedlearn.NDArray{"data": {Ndarray: data}}}})
	if err == nil || !strings.Contains(err.Error(), "limit") {
		t.Fatalf("oversized result: %v", err)
	}
	if _, err := fl.Heartbeat(context.Background(), &fedlearn.Token{Token: reg.Token}); err != nil {
		t.Fatalf("connection broken: %v", err)
	}
	good := &client.Client{Name: "good", Wire: wire20.Wire{}, Target: addr, Tasks: map[string]flare.Executor{"train": flaretest.AddExecutor{Delta: 1, Steps: 1}}}
	if err := good.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// With mutual TLS a client can only register under its certificate's name.
func TestRegistrationMustMatchCertificate(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t)
	ca.WriteRoot(t, filepath.Join(dir, "rootCA.pem"))
	ca.Issue(t, "server", filepath.Join(dir, "crt"), filepath.Join(dir, "key"))
	ca.Issue(t, "site-1", filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key"))
	kitPath := filepath.Join(dir, "fed.json")
	os.WriteFile(kitPath, []byte(`{"servers": [{"name": "p", "service": {"target": "127.0.0.1:1"}, "ssl_private_key": "key", "ssl_cert": "crt", "ssl_root_cert": "rootCA.pem"}],
 "client": {"ssl_private_key": "client.key", "ssl_cert": "client.crt", "ssl_root_cert": "rootCA.pem"}}`), 0o644)
	kit, err := flare.LoadStartupKit(kitPath)
	if err != nil {
		t.Fatal(err)
	}
	srvCreds, err := kit.ServerTLS()
	if err != nil {
		t.Fatal(err)
	}
	cliCreds, err := kit.ClientTLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	p := &flaretest.MemPersistor{Init: flaretest.InitModel()}
	reg := &flare.Registry{Persistors: map[string]func(json.RawMessage) (flare.ModelPersistor, error){
		"test.MemPersistor": func(json.RawMessage) (flare.ModelPersistor, error) { return p, nil }}}
	srv, _ := New(flaretest.ServerConfig(1, 1, 0), reg)
	srv.Wire, srv.EndGrace = wire20.ServerWire{TLS: srvCreds}, time.Second
	lis, _ := net.Listen("tcp", "127.0.0.1:0")
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), lis) }()
	impostor := &client.Client{Name: "site-2", Wire: wire20.Wire{TLS: cliCreds}, Target: lis.Addr().String()}
	if err := impostor.Run(context.Background()); status.Code(err) != codes.PermissionDenied || !strings.Contains(fmt.Sprint(err), "does not match its certificate") {
		t.Fatalf("impostor: %v", err)
	}
	honest := &client.Client{Name: "site-1", Wire: wire20.Wire{TLS: cliCreds}, Target: lis.Addr().String(),
		Tasks: map[string]flare.Executor{"train": flaretest.AddExecutor{Delta: 1, Steps: 1}}}
	if err := honest.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
