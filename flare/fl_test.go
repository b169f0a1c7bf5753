package flare

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
	"google.golang.org/grpc/credentials/insecure"

	"github.com/flarego/flarego/internal/testpki"
	"github.com/flarego/flarego/persistor"
	"github.com/flarego/flarego/persistor/pickle"
	"github.com/flarego/flarego/proto/fedlearn"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// memPersistor keeps every saved model.
type memPersistor struct {
	mu    sync.Mutex
	init  *persistor.StateDict
	saved []*persistor.StateDict
}

func (m *memPersistor) Load() (*persistor.Checkpoint, error) {
	return &persistor.Checkpoint{Model: m.init}, nil
}

func (m *memPersistor) Save(c *persistor.Checkpoint) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.saved = append(m.saved, c.Model)
	return nil
}

// addExecutor returns the weights plus delta, with NUM_STEPS steps.
type addExecutor struct {
	delta float32
	steps int64
	delay time.Duration
}

func (e addExecutor) Execute(ctx context.Context, task string, data *Shareable, fl *FLContext) (*Shareable, error) {
	if fl == nil {
		return nil, fmt.Errorf("no FLContext")
	}
	time.Sleep(e.delay)
	sd := persistor.NewStateDict()
	for _, a := range data.DXO.Data {
		if a.Array.DType != persistor.Float32 {
			sd.Set(a.Name, a.Array)
			continue
		}
		v, _ := a.Array.Float32s()
		w := make([]float32, len(v))
		for i := range v {
			w[i] = v[i] + e.delta
		}
		sd.Set(a.Name, persistor.FromFloat32(w, a.Array.Shape...))
	}
	out := NewShareable()
	out.DXO = WeightsDXO(sd, &pickle.Dict{Items: []pickle.Item{{Key: MetaNumStepsCurrentRound, Value: e.steps}}})
	return out, nil
}

func testServerConfig(minClients, rounds int, wait float64) *ServerConfig {
	raw := fmt.Sprintf(`{"format_version": 2, "server": {"heart_beat_timeout": 600},
 "components": [
  {"id": "persistor", "path": "test.MemPersistor", "args": {}},
  {"id": "shareable_generator", "path": %q, "args": {}},
  {"id": "aggregator", "path": %q, "args": {"expected_data_kind": "WEIGHTS"}}],
 "workflows": [{"id": "scatter_and_gather", "path": %q, "args": {"min_clients": %d, "num_rounds": %d, "start_round": 0,
   "wait_time_after_min_received": %g, "train_task_name": "train", "train_timeout": 0}}]}`,
		PathFullModelGenerator, PathWeightedAggregator, PathScatterAndGather, minClients, rounds, wait)
	var c ServerConfig
	if err := json.Unmarshal([]byte(raw), &c); err != nil {
		panic(err)
	}
	return &c
}

func startServer(t *testing.T, cfg *ServerConfig, p *memPersistor) (*Server, string, chan error) {
	t.Helper()
	reg := &Registry{Persistors: map[string]func(json.RawMessage) (ModelPersistor, error){
		"test.MemPersistor": func(json.RawMessage) (ModelPersistor, error) { return p, nil }}}
	srv, err := NewServer(cfg, reg)
	if err != nil {
		t.Fatal(err)
	}
	srv.Logf = t.Logf
	addr, done := serveOn(t, srv)
	return srv, addr, done
}

// serveOn serves srv on a loopback port.
func serveOn(t *testing.T, srv *Server) (string, chan error) {
	t.Helper()
	srv.EndGrace = time.Second
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
func runToEnd(t *testing.T, done chan error, clients ...*Client) {
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

func initModel() *persistor.StateDict {
	sd := persistor.NewStateDict()
	sd.Set("w", persistor.FromFloat32([]float32{1, 2, 3, 4}, 2, 2))
	sd.Set("bn.num_batches_tracked", persistor.FromInt64([]int64{0}))
	return sd
}

func TestScatterAndGatherWeightedMean(t *testing.T) {
	p := &memPersistor{init: initModel()}
	_, addr, done := startServer(t, testServerConfig(2, 2, 0), p)
	var clients []*Client
	for i, ex := range []addExecutor{{delta: 1, steps: 1}, {delta: 4, steps: 3}} {
		clients = append(clients, &Client{Name: fmt.Sprintf("site-%d", i+1), Target: addr, Tasks: map[string]Executor{"train": ex}, Logf: t.Logf, Gzip: i == 0})
	}
	runToEnd(t, done, clients...)
	if len(p.saved) != 2 {
		t.Fatalf("%d models saved, want one per round", len(p.saved))
	}
	// Each round adds the weighted mean of the deltas: (1·1 + 3·4)/4 = 3.25.
	for r, want := range [][]float64{{4.25, 5.25, 6.25, 7.25}, {7.5, 8.5, 9.5, 10.5}} {
		w, _ := p.saved[r].Get("w").Float32s()
		for i := range want {
			if math.Abs(float64(w[i])-want[i]) > 1e-6 {
				t.Fatalf("round %d: w = %v, want %v", r, w, want)
			}
		}
	}
	if nb := p.saved[1].Get("bn.num_batches_tracked"); nb.DType != persistor.Float64 {
		t.Errorf("num_batches_tracked aggregated as %s (NVFlare makes it float64)", nb.DType)
	}
}

// A client that dies mid-round does not stop a round that has min_clients.
func TestRoundCompletesWithoutDeadClient(t *testing.T) {
	p := &memPersistor{init: initModel()}
	_, addr, done := startServer(t, testServerConfig(1, 1, 0.5), p)
	ctx, kill := context.WithCancel(context.Background())
	slow := &Client{Name: "slow", Target: addr, Tasks: map[string]Executor{"train": addExecutor{delta: 100, steps: 1, delay: 2 * time.Second}}}
	go slow.Run(ctx)
	time.Sleep(200 * time.Millisecond)
	kill() // killed while training
	fast := &Client{Name: "fast", Target: addr, Tasks: map[string]Executor{"train": addExecutor{delta: 1, steps: 1}}}
	if err := fast.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	w, _ := p.saved[0].Get("w").Float32s()
	if w[0] != 2 {
		t.Fatalf("w = %v: the dead client's result leaked in", w)
	}
}

// A hostile pickle is refused, nothing runs, and the connection and the
// server go on working.
func TestHostileResultRejected(t *testing.T) {
	p := &memPersistor{init: initModel()}
	srv, addr, done := startServer(t, testServerConfig(1, 1, 0), p)
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
		if _, err := DecodeFLContext(ct.Data.Params["fl_context"].GetNdarray()); err != nil {
			t.Fatalf("%s answer: fl_context: %v", ct.TaskName, err)
		}
	}
	good := &Client{Name: "good", Target: addr, Tasks: map[string]Executor{"train": addExecutor{delta: 1, steps: 1}}}
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
	p := &memPersistor{init: initModel()}
	cfg := testServerConfig(2, 1, 0) // waits for a second client that never comes
	reg := &Registry{Persistors: map[string]func(json.RawMessage) (ModelPersistor, error){
		"test.MemPersistor": func(json.RawMessage) (ModelPersistor, error) { return p, nil }}}
	first, err := NewServer(cfg, reg)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	go first.Serve(context.Background(), lis)

	c := &Client{Name: "site-1", Target: addr, Tasks: map[string]Executor{"train": addExecutor{delta: 1, steps: 1}}, Logf: t.Logf, GiveUp: 20 * time.Second}
	done := make(chan error, 1)
	go func() { done <- c.Run(context.Background()) }()
	time.Sleep(500 * time.Millisecond) // registered, result submitted, waiting for the round
	first.Stop()

	second, err := NewServer(testServerConfig(1, 1, 0), reg)
	if err != nil {
		t.Fatal(err)
	}
	second.Logf, second.EndGrace = t.Logf, time.Second
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
	if len(p.saved) != 1 {
		t.Fatalf("%d models saved", len(p.saved))
	}
}

// A client that registered and went silent is dropped after the heart-beat
// timeout, so the round need not wait for it.
func TestSilentClientDropped(t *testing.T) {
	p := &memPersistor{init: initModel()}
	cfg := testServerConfig(1, 1, 30) // would wait 30 s for a second result
	reg := &Registry{Persistors: map[string]func(json.RawMessage) (ModelPersistor, error){
		"test.MemPersistor": func(json.RawMessage) (ModelPersistor, error) { return p, nil }}}
	srv, err := NewServer(cfg, reg)
	if err != nil {
		t.Fatal(err)
	}
	srv.Logf, srv.EndGrace, srv.HeartBeatTimeout = t.Logf, time.Second, 300*time.Millisecond
	lis, _ := net.Listen("tcp", "127.0.0.1:0")
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), lis) }()
	conn, _ := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	defer conn.Close()
	if _, err := fedlearn.NewFederatedTrainingClient(conn).Register(context.Background(), &fedlearn.ClientLogin{ClientName: "ghost"}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	c := &Client{Name: "live", Target: lis.Addr().String(), Tasks: map[string]Executor{"train": addExecutor{delta: 1, steps: 1}}, Heartbeat: 100 * time.Millisecond}
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

// A result larger than the pickle limit is refused with a clear error; the
// connection and the run go on.
func TestOversizedResultRejected(t *testing.T) {
	old := MaxPickleBytes
	MaxPickleBytes = 64 << 10
	defer func() { MaxPickleBytes = old }()
	big := persistor.NewStateDict()
	big.Set("w", persistor.FromFloat32(make([]float32, 64<<10), 64<<10)) // 256 KiB
	p := &memPersistor{init: initModel()}
	srv, addr, done := startServer(t, testServerConfig(1, 1, 0), p)
	defer srv.Stop()
	conn, _ := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	defer conn.Close()
	fl := fedlearn.NewFederatedTrainingClient(conn)
	reg, err := fl.Register(context.Background(), &fedlearn.ClientLogin{ClientName: "big"})
	if err != nil {
		t.Fatal(err)
	}
	sh := NewShareable()
	sh.DXO = WeightsDXO(big, nil)
	data, _ := EncodeShareable(sh)
	_, err = fl.SubmitUpdate(context.Background(), &fedlearn.Contribution{Client: &fedlearn.ClientState{Token: reg.Token},
		Data: &fedlearn.ModelData{Params: map[string]*fedlearn.NDArray{"data": {Ndarray: data}}}})
	if err == nil || !strings.Contains(err.Error(), "limit") {
		t.Fatalf("oversized result: %v", err)
	}
	if _, err := fl.Heartbeat(context.Background(), &fedlearn.Token{Token: reg.Token}); err != nil {
		t.Fatalf("connection broken: %v", err)
	}
	good := &Client{Name: "good", Target: addr, Tasks: map[string]Executor{"train": addExecutor{delta: 1, steps: 1}}}
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
	ca.Issue(t, "server", filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key"))
	ca.Issue(t, "site-1", filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key"))
	kitPath := filepath.Join(dir, "fed.json")
	os.WriteFile(kitPath, []byte(`{"servers": [{"name": "p", "service": {"target": "127.0.0.1:1"}, "ssl_private_key": "server.key", "ssl_cert": "server.crt", "ssl_root_cert": "rootCA.pem"}],
 "client": {"ssl_private_key": "client.key", "ssl_cert": "client.crt", "ssl_root_cert": "rootCA.pem"}}`), 0o644)
	kit, err := LoadStartupKit(kitPath)
	if err != nil {
		t.Fatal(err)
	}
	srvCreds, err := kit.ServerCredentials()
	if err != nil {
		t.Fatal(err)
	}
	cliCreds, err := kit.ClientCredentials()
	if err != nil {
		t.Fatal(err)
	}
	p := &memPersistor{init: initModel()}
	reg := &Registry{Persistors: map[string]func(json.RawMessage) (ModelPersistor, error){
		"test.MemPersistor": func(json.RawMessage) (ModelPersistor, error) { return p, nil }}}
	srv, _ := NewServer(testServerConfig(1, 1, 0), reg)
	srv.ServerOptions, srv.EndGrace = []grpc.ServerOption{srvCreds}, time.Second
	lis, _ := net.Listen("tcp", "127.0.0.1:0")
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), lis) }()
	impostor := &Client{Name: "site-2", Target: lis.Addr().String(), DialOptions: []grpc.DialOption{cliCreds}}
	if err := impostor.Run(context.Background()); status.Code(err) != codes.PermissionDenied || !strings.Contains(fmt.Sprint(err), "does not match its certificate") {
		t.Fatalf("impostor: %v", err)
	}
	honest := &Client{Name: "site-1", Target: lis.Addr().String(), DialOptions: []grpc.DialOption{cliCreds},
		Tasks: map[string]Executor{"train": addExecutor{delta: 1, steps: 1}}}
	if err := honest.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
