package wire20

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	grpcgzip "google.golang.org/grpc/encoding/gzip"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	protobuf "google.golang.org/protobuf/proto"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/client"
	"github.com/flarego/flarego/flare/internal/flaretest"
	"github.com/flarego/flarego/persistor"
	"github.com/flarego/flarego/proto/fedlearn"
)

// Attack payloads, built by the tests, small on the wire.

// gzipRegisterBomb is a gzip stream of a ClientLogin whose name is
// 64 × 16 MiB = 1 GiB long: 65 gzip members, about 1 MB.
func gzipRegisterBomb(t testing.TB) []byte {
	const chunk, chunks = 16 << 20, 64
	var out bytes.Buffer
	member := func(p []byte) {
		w, _ := gzip.NewWriterLevel(&out, gzip.BestCompression)
		w.Write(p)
		w.Close()
	}
	head := []byte{0x0a} // ClientLogin field 1, client_name
	head = binary.AppendUvarint(head, chunk*chunks)
	member(head)
	start := out.Len()
	member(bytes.Repeat([]byte("a"), chunk))
	one := append([]byte(nil), out.Bytes()[start:]...)
	for i := 1; i < chunks; i++ {
		out.Write(one)
	}
	return out.Bytes()
}

// preCompressed sends fixed, already gzip-compressed bytes whatever the
// message: it is how an attacker's client sends a compression bomb.
type preCompressed struct{ payload []byte }

func (p preCompressed) Do(w io.Writer, _ []byte) error { _, err := w.Write(p.payload); return err }
func (p preCompressed) Type() string                   { return "gzip" }

func dialBomb(t testing.TB, addr string, payload []byte) *grpc.ClientConn {
	t.Helper()
	//lint:ignore SA1019 an attacker's client: the only way to send chosen compressed bytes
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithCompressor(preCompressed{payload}))
	if err != nil {
		t.Fatal(err)
	}
	return conn
}

// rawCodec sends fixed bytes as every request (uncompressed), sharing one
// buffer between calls: an attacker's oversized request at no cost to it.
type rawCodec struct{ payload []byte }

func (c rawCodec) Name() string { return "proto" }
func (c rawCodec) Marshal(any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(c.payload)}, nil
}
func (c rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	return protobuf.Unmarshal(data.Materialize(), v.(protobuf.Message))
}

// What gRPC itself enforces: MaxRecvMsgSize bounds the decompressed length
// too, but it is one limit for every method, so with gRPC's gzip a server
// that accepts large models accepts a Register of the same size.
func TestGRPCBoundsDecompressedSizeOnlyByMaxRecvMsgSize(t *testing.T) {
	var got atomic.Int64
	gs := grpc.NewServer(grpc.MaxRecvMsgSize(1 << 20))
	fedlearn.RegisterFederatedTrainingServer(gs, &nameLength{n: &got})
	lis, _ := net.Listen("tcp", "127.0.0.1:0")
	go gs.Serve(lis)
	defer gs.Stop()
	conn, _ := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.UseCompressor(grpcgzip.Name)))
	defer conn.Close()
	fl := fedlearn.NewFederatedTrainingClient(conn)
	// 900 KiB of name: a few KB compressed, accepted although no name needs it.
	if _, err := fl.Register(context.Background(), &fedlearn.ClientLogin{ClientName: strings.Repeat("a", 900<<10)}); err != nil || got.Load() != 900<<10 {
		t.Fatalf("900 KiB name: %v (handler saw %d bytes)", err, got.Load())
	}
	_, err := fl.Register(context.Background(), &fedlearn.ClientLogin{ClientName: strings.Repeat("a", 2<<20)})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "after decompression") {
		t.Fatalf("2 MiB name: %v", err)
	}
}

type nameLength struct {
	fedlearn.UnimplementedFederatedTrainingServer
	n *atomic.Int64
}

func (s *nameLength) Register(_ context.Context, req *fedlearn.ClientLogin) (*fedlearn.FederatedSummary, error) {
	s.n.Store(int64(len(req.ClientName)))
	return &fedlearn.FederatedSummary{}, nil
}

// A 1 MB gzip-compressed Register carrying a 1 GiB client name is refused
// after 64 KiB of decompression: nothing kept, nothing logged, the heap
// barely moves.
func TestCompressedRegisterBombRefused(t *testing.T) {
	bomb := gzipRegisterBomb(t)
	t.Logf("bomb: %d bytes compressed for a 1 GiB name", len(bomb))
	srv, log := newTestServer(t, flaretest.ServerConfig(1, 1, 0), &flaretest.MemPersistor{Init: flaretest.InitModel()})
	w := &spyWire{}
	srv.Wire = w
	addr, done := serveOn(t, srv)
	defer srv.Stop()
	conn := dialBomb(t, addr, bomb)
	defer conn.Close()
	stop := flaretest.HeapPeak()
	start := time.Now()
	_, err := fedlearn.NewFederatedTrainingClient(conn).Register(context.Background(), &fedlearn.ClientLogin{ClientName: "x"})
	peak := stop()
	if !strings.Contains(fmt.Sprint(err), "Register request larger than its limit of 65536 bytes") {
		t.Fatalf("compressed 1 GiB Register: %v", err)
	}
	t.Logf("refused in %s, heap peak %d MiB: %v", time.Since(start), peak>>20, err)
	if peak > 128<<20 {
		t.Errorf("heap peaked at %d MiB", peak>>20)
	}
	if n := w.registered.Load(); n != 0 {
		t.Errorf("%d client(s) registered", n)
	}
	log.CheckLines(t, 300)
	good := &client.Client{Name: "good", Wire: Wire{Gzip: true}, Target: addr, Tasks: map[string]flare.Executor{"train": flaretest.AddExecutor{Delta: 1, Steps: 1}}}
	if err := good.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// An uncompressed small request over its limit is refused too, and a SubmitUpdate
// of a normal model passes (its limit is the model's).
func TestRequestLimitsPerMessage(t *testing.T) {
	name, limit := requestLimit(&fedlearn.Token{}, 1<<30)
	if limit != maxSmallRequestBytes || name != "Heartbeat" {
		t.Fatalf("Heartbeat limit %s %d", name, limit)
	}
	if _, limit := requestLimit(&fedlearn.Contribution{}, 5<<20); limit != 5<<20 {
		t.Fatalf("SubmitUpdate limit %d, want the server's bound", limit)
	}
	// A SubmitUpdate is bounded by the model: every value as a float64 in
	// a protocol-2 pickle, and the envelope; never below a floor for small
	// models, never past MaxPickleBytes.
	if n := contributionBytesFor(nil); n != minContributionBytes {
		t.Fatalf("no model: limit %d", n)
	}
	tiny := flaretest.InitModel()
	tiny.Set("w", persistor.FromFloat32([]float32{1, 2, 3}, 2, 2))
	if n := contributionBytesFor(tiny); n != minContributionBytes {
		t.Fatalf("tiny model: limit %d", n)
	}
	million := persistor.NewStateDict()
	million.Set("w", persistor.FromFloat32(make([]float32, 1e6), 1000, 1000))
	if n := contributionBytesFor(million); n < 16e6 || n > 21e6 {
		t.Fatalf("1M-parameter model: limit %d, want 16 MB + envelope", n)
	}
	srv, _ := newTestServer(t, flaretest.ServerConfig(1, 1, 0), &flaretest.MemPersistor{Init: flaretest.InitModel()})
	addr, _ := serveOn(t, srv)
	defer srv.Stop()
	conn, _ := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	defer conn.Close()
	_, err := fedlearn.NewFederatedTrainingClient(conn).Heartbeat(context.Background(), &fedlearn.Token{Token: strings.Repeat("t", 100<<10)})
	if !strings.Contains(fmt.Sprint(err), "Heartbeat request larger than its limit of 65536 bytes") {
		t.Fatalf("100 KiB heartbeat: %v", err)
	}
}

// silentStreams opens n streams to method, each on its own connection,
// that send headers (and md) and nothing else, until ctx ends; the
// returned channel gets each stream's end.
func silentStreams(t testing.TB, ctx context.Context, addr, method string, n int) chan error {
	t.Helper()
	ended := make(chan error, n)
	for i := 0; i < n; i++ {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			defer conn.Close()
			st, err := conn.NewStream(ctx, &grpc.StreamDesc{ClientStreams: true, ServerStreams: true}, method)
			if err == nil {
				err = st.RecvMsg(new(fedlearn.FederatedSummary)) // waits: no request is ever sent
			}
			ended <- err
		}()
	}
	return ended
}

// Twelve header-only streams without a token hold no slot for long:
// each is cancelled at its receive deadline, calls without a known token
// hold at most half of the slots, and a call with a forged token in its
// metadata is refused at once. The run goes on at full speed for a client
// that shows its token, and completes for one that does not.
func TestSilentStreamsDoNotStallTraining(t *testing.T) {
	p := &flaretest.MemPersistor{Init: flaretest.InitModel()}
	srv, log := newTestServer(t, flaretest.ServerConfig(2, 2, 0), p)
	srv.Wire = &spyWire{tune: func(g *uploadGate) { g.submitRecv, g.smallRecv = 500*time.Millisecond, 500*time.Millisecond }}
	addr, done := serveOn(t, srv)
	defer srv.Stop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ended := silentStreams(t, ctx, addr, SubmitMethod, 12)
	time.Sleep(100 * time.Millisecond)

	conn, _ := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	defer conn.Close()
	start := time.Now()
	_, err := fedlearn.NewFederatedTrainingClient(conn).SubmitUpdate(metadata.AppendToOutgoingContext(context.Background(), TokenHeader, "forged"),
		&fedlearn.Contribution{Client: &fedlearn.ClientState{Token: "forged"}})
	if status.Code(err) != codes.Unauthenticated || time.Since(start) > time.Second {
		t.Fatalf("forged metadata token: %v after %s", err, time.Since(start))
	}

	start = time.Now()
	shows := &client.Client{Name: "site-1", Wire: Wire{}, Target: addr, Tasks: map[string]flare.Executor{"train": flaretest.AddExecutor{Delta: 1, Steps: 1}}, Logf: t.Logf}
	hides := &client.Client{Name: "site-2", Wire: Wire{}, Target: addr, Tasks: map[string]flare.Executor{"train": flaretest.AddExecutor{Delta: 1, Steps: 1}}, Logf: t.Logf}
	runToEnd(t, done, shows, hides)
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("two rounds took %s under 12 silent streams", d)
	}
	for i := 0; i < 12; i++ {
		select {
		case err := <-ended:
			if err == nil {
				t.Error("a silent stream got an answer")
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a silent stream was never cancelled")
		}
	}
	if len(p.Saved) != 2 {
		t.Fatalf("%d models saved", len(p.Saved))
	}
	log.CheckLines(t, 300)
}

// The attacks (items 1, 2, 3, 5, 6), from 127.0.0.1 and bounded in
// count and time, while two clients run two rounds: the run completes,
// the server stays up and its heap in use stays under 256 MiB.
func TestServerSurvivesScriptedAttack(t *testing.T) {
	const heapBound = 256 << 20
	p := &flaretest.MemPersistor{Init: flaretest.InitModel()}
	srv, log := newTestServer(t, flaretest.ServerConfig(2, 2, 0), p)
	srv.Wire = &spyWire{tune: func(g *uploadGate) { g.submitRecv, g.smallRecv = time.Second, time.Second }}
	addr, done := serveOn(t, srv)
	defer srv.Stop()
	attackCtx, stopAttack := context.WithCancel(context.Background())
	defer stopAttack()
	stop := flaretest.HeapPeak()

	var wg sync.WaitGroup
	var refused, accepted atomic.Int32
	attack := func(name string, n int, f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < n && attackCtx.Err() == nil; i++ {
				if err := f(); err != nil {
					refused.Add(1)
					t.Logf("attack %s: %.160s", name, err)
				} else {
					accepted.Add(1)
					t.Errorf("attack %s accepted", name)
				}
			}
		}()
	}
	// Each attack has its connections: a call waiting at the gate holds
	// up the other calls of its connection.
	dial := func() fedlearn.FederatedTrainingClient {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return fedlearn.NewFederatedTrainingClient(conn)
	}
	attackers := 0
	submit := func(data []byte) func() error {
		fl := dial()
		// Each attacker registers: a token costs nothing without TLS.
		attackers++
		reg, err := fl.Register(context.Background(), &fedlearn.ClientLogin{ClientName: fmt.Sprintf("mallory-%d", attackers)})
		if err != nil {
			t.Fatal(err)
		}
		return func() error {
			// mallory registered: its calls show the token, as a client's should.
			_, err := fl.SubmitUpdate(metadata.AppendToOutgoingContext(attackCtx, TokenHeader, reg.Token), &fedlearn.Contribution{Client: &fedlearn.ClientState{Token: reg.Token},
				Data: &fedlearn.ModelData{Params: map[string]*fedlearn.NDArray{"data": {Ndarray: data}}}})
			return err
		}
	}
	// Item 1: an 8 TiB numpy shape with 8 bytes of data.
	attack("numpy shape bomb", 3, submit(flaretest.NumpyShapeBomb(t, EncodeShareable)))
	// Item 3: 1 GiB names in 1 MB of gzip, and a name that forges a log line.
	bomb := gzipRegisterBomb(t)
	for i := 0; i < 4; i++ {
		bc := dialBomb(t, addr, bomb)
		defer bc.Close()
		attack("gzip Register bomb", 2, func() error {
			_, err := fedlearn.NewFederatedTrainingClient(bc).Register(attackCtx, &fedlearn.ClientLogin{ClientName: "x"})
			return err
		})
	}
	// Item 3 for a SubmitUpdate: 1 GiB in 1 MB of gzip, without a token
	// and with one; the server stops at the bound its model sets (16 MiB
	// here), not at the largest any model may have. (gRPC compresses no
	// empty message: the call needs a field for the bomb to go out.)
	for i := 0; i < 2; i++ {
		bc := dialBomb(t, addr, bomb)
		defer bc.Close()
		attack("tokenless gzip SubmitUpdate bomb", 2, func() error {
			_, err := fedlearn.NewFederatedTrainingClient(bc).SubmitUpdate(attackCtx, &fedlearn.Contribution{TaskName: "x"})
			return err
		})
	}
	for i := 0; i < 2; i++ {
		reg, err := dial().Register(context.Background(), &fedlearn.ClientLogin{ClientName: fmt.Sprintf("zipper-%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		bc := dialBomb(t, addr, bomb)
		defer bc.Close()
		attack("gzip SubmitUpdate bomb with a token", 2, func() error {
			_, err := fedlearn.NewFederatedTrainingClient(bc).SubmitUpdate(metadata.AppendToOutgoingContext(attackCtx, TokenHeader, reg.Token), &fedlearn.Contribution{TaskName: "x"})
			return err
		})
	}
	fl := dial()
	// Item 3 without compression: 16 MiB Registers, read no further than
	// their connection's credit.
	huge, _ := protobuf.Marshal(&fedlearn.ClientLogin{ClientName: strings.Repeat("h", 16<<20)})
	for i := 0; i < 4; i++ {
		hc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.ForceCodecV2(rawCodec{huge})))
		if err != nil {
			t.Fatal(err)
		}
		defer hc.Close()
		attack("uncompressed 16 MiB Register", 2, func() error {
			_, err := fedlearn.NewFederatedTrainingClient(hc).Register(attackCtx, &fedlearn.ClientLogin{})
			return err
		})
	}
	attack("newline name", 2, func() error {
		_, err := fl.Register(attackCtx, &fedlearn.ClientLogin{ClientName: "site-1\nround 2/2 done"})
		return err
	})
	forger := dial()
	attack("forged token", 5, func() error {
		_, err := forger.GetTask(metadata.AppendToOutgoingContext(attackCtx, TokenHeader, "forged"), &fedlearn.ClientState{Token: "forged"})
		return err
	})
	// Item 2: billion laughs; item 6: a 1 MiB LONG4 and a 4-million-digit LONG.
	attack("billion laughs", 2, submit(flaretest.BillionLaughs(80)))
	attack("LONG4 of 1 MiB", 1, submit(flaretest.BigLong4(1<<20)))
	attack("LONG of 4M digits", 1, submit(flaretest.BigDecimalLong(4_000_000)))

	// Item 5: header-only streams without a token, to every gated pool.
	time.Sleep(100 * time.Millisecond)
	silent := silentStreams(t, attackCtx, addr, SubmitMethod, 12)
	silentTasks := silentStreams(t, attackCtx, addr, GetTaskMethod, 12)
	silentRegs := silentStreams(t, attackCtx, addr, RegisterMethod, 12)
	time.Sleep(100 * time.Millisecond)

	start := time.Now()
	var clients []*client.Client
	for i := 1; i <= 2; i++ {
		clients = append(clients, &client.Client{Name: fmt.Sprintf("site-%d", i), Wire: Wire{Gzip: i == 1}, Target: addr,
			Tasks: map[string]flare.Executor{"train": flaretest.AddExecutor{Delta: 1, Steps: 1}}, Logf: t.Logf})
	}
	errs := make(chan error, 2)
	for _, c := range clients {
		go func() { errs <- c.Run(context.Background()) }()
	}
	for range clients {
		if err := <-errs; err != nil {
			t.Fatalf("legitimate client: %v", err)
		}
	}
	t.Logf("two rounds under attack in %s", time.Since(start))
	stopAttack()
	wg.Wait()
	for _, ch := range []chan error{silent, silentTasks, silentRegs} {
		for i := 0; i < 12; i++ {
			<-ch
		}
	}
	if err := <-done; err != nil {
		t.Fatalf("server: %v", err)
	}
	peak := stop()
	t.Logf("heap in use peaked at %d MiB; %d attack calls refused", peak>>20, refused.Load())
	if peak > heapBound {
		t.Errorf("heap in use peaked at %d MiB (bound %d MiB)", peak>>20, heapBound>>20)
	}
	if len(p.Saved) != 2 {
		t.Fatalf("%d models saved", len(p.Saved))
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("the run took %s under attack", d)
	}
	log.CheckLines(t, 400)
}

// The listener holds at most its bound of connections; one past it waits
// until another closes, and closing the listener ends a waiting Accept.
func TestConnectionsBounded(t *testing.T) {
	inner, _ := net.Listen("tcp", "127.0.0.1:0")
	lis := newLimitListener(inner, 2, nil)
	accepted := make(chan net.Conn, 3)
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	for i := 0; i < 3; i++ {
		c, err := net.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	first, second := <-accepted, <-accepted
	select {
	case <-accepted:
		t.Fatal("a third connection was accepted")
	case <-time.After(200 * time.Millisecond):
	}
	first.Close()
	select {
	case <-accepted:
	case <-time.After(2 * time.Second):
		t.Fatal("the third connection was not accepted after one closed")
	}
	second.Close()
	lis.Close()
	for range accepted {
	}
}

// gRPC reads a whole request before the codec can hold it to its limit:
// an uncompressed 64 MiB Register must not be read whole. Its connection
// is closed once it has sent more than its calls may carry; the server
// and other connections go on.
func TestUncompressedOversizedRequestCutOff(t *testing.T) {
	srv, _ := newTestServer(t, flaretest.ServerConfig(1, 1, 0), &flaretest.MemPersistor{Init: flaretest.InitModel()})
	addr, done := serveOn(t, srv)
	defer srv.Stop()
	conn, _ := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	defer conn.Close()
	name := strings.Repeat("a", 64<<20)
	runtime.GC()
	stop := flaretest.HeapPeak()
	_, err := fedlearn.NewFederatedTrainingClient(conn).Register(context.Background(), &fedlearn.ClientLogin{ClientName: name})
	peak := stop()
	if err == nil {
		t.Fatal("a 64 MiB Register went through")
	}
	t.Logf("64 MiB Register: %v; heap peak %d MiB (the client's copy of the name included)", err, peak>>20)
	// The client holds the name and its encoding (128 MiB); the server must not add a copy.
	if peak > 160<<20 {
		t.Errorf("heap in use peaked at %d MiB", peak>>20)
	}
	// A SubmitUpdate larger than the base credit still goes through.
	big := persistor.NewStateDict()
	big.Set("w", persistor.FromFloat32(make([]float32, 2<<20), 2<<20)) // 8 MiB
	p := &flaretest.MemPersistor{Init: big}
	srv2, _ := newTestServer(t, flaretest.ServerConfig(1, 1, 0), p)
	addr2, done2 := serveOn(t, srv2)
	defer srv2.Stop()
	good := &client.Client{Name: "good", Wire: Wire{}, Target: addr2, Tasks: map[string]flare.Executor{"train": flaretest.AddExecutor{Delta: 1, Steps: 1}}}
	if err := good.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-done2; err != nil || len(p.Saved) != 1 {
		t.Fatalf("8 MiB model: %v, %d saved", err, len(p.Saved))
	}
	good1 := &client.Client{Name: "good", Wire: Wire{}, Target: addr, Tasks: map[string]flare.Executor{"train": flaretest.AddExecutor{Delta: 1, Steps: 1}}}
	if err := good1.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
