package flare

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/big"
	"net"
	"os"
	"path/filepath"
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

	"github.com/flarego/flarego/persistor"
	"github.com/flarego/flarego/persistor/pickle"
	"github.com/flarego/flarego/proto/admin"
	"github.com/flarego/flarego/proto/fedlearn"
)

// Attack payloads, built by the tests, small on the wire.

// shareablePickle is a pickled Shareable whose __headers__ are {"x": value},
// value being raw pickle opcodes.
func shareablePickle(value []byte) []byte {
	var b bytes.Buffer
	b.WriteString("\x80\x02cnvflare.apis.shareable\nShareable\n)\x81")
	binUnicode(&b, "__headers__")
	b.WriteString("}")
	binUnicode(&b, "x")
	b.Write(value)
	b.WriteString("ss.")
	return b.Bytes()
}

func binUnicode(b *bytes.Buffer, s string) {
	b.WriteByte('X')
	binary.Write(b, binary.LittleEndian, uint32(len(s)))
	b.WriteString(s)
}

// billionLaughs is a tuple nested levels deep whose two halves are one
// memoised tuple: a few hundred bytes standing for 2^levels leaves.
func billionLaughs(levels int) []byte {
	var b bytes.Buffer
	b.WriteString(")q\x000") // (), BINPUT 0, POP
	for i := 1; i <= levels; i++ {
		fmt.Fprintf(&b, "h%ch%c\x86q%c0", byte(i-1), byte(i-1), byte(i))
	}
	fmt.Fprintf(&b, "h%c", byte(levels))
	return shareablePickle(b.Bytes())
}

// bigLong4 is a LONG4 integer of n bytes; bigDecimalLong a LONG of n digits.
func bigLong4(n int) []byte {
	var b bytes.Buffer
	b.WriteByte(0x8b)
	binary.Write(&b, binary.LittleEndian, uint32(n))
	b.Write(bytes.Repeat([]byte{0x5a}, n))
	return shareablePickle(b.Bytes())
}

func bigDecimalLong(digits int) []byte {
	return shareablePickle([]byte("L" + strings.Repeat("7", digits) + "L\n"))
}

// numpyShapeBomb is a WEIGHTS result whose array declares shape
// [2^20, 2^20] float64 (8 TiB) and holds 8 bytes.
func numpyShapeBomb(t testing.TB) []byte {
	sh := NewShareable()
	sh.DXO = &DXO{Kind: KindWeights, Meta: &pickle.Dict{}, Data: []NamedArray{{"w",
		&persistor.Tensor{DType: persistor.Float64, Shape: []int{1 << 20, 1 << 20}, Data: make([]byte, 8)}}}}
	b, err := EncodeShareable(sh)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

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

// withTokenMetadata makes c send its token in every call's metadata, as
// NVFlare's secure mode does, so that the gate knows it before reading.
func withTokenMetadata(c *Client) *Client {
	c.DialOptions = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			if tok := c.currentToken(); tok != "" {
				ctx = metadata.AppendToOutgoingContext(ctx, tokenHeader, tok)
			}
			return invoker(ctx, method, req, reply, cc, opts...)
		})}
	return c
}

// logRecorder keeps a server's log lines.
type logRecorder struct {
	t     testing.TB
	mu    sync.Mutex
	lines []string
}

func (l *logRecorder) logf(format string, args ...any) {
	line := fmt.Sprintf(format, args...)
	l.mu.Lock()
	l.lines = append(l.lines, line)
	l.mu.Unlock()
	if len(line) > 300 {
		line = line[:300] + "..."
	}
	l.t.Log(line)
}

func (l *logRecorder) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

// checkLogLines fails if a line is longer than max or holds a newline.
func (l *logRecorder) check(t *testing.T, max int) {
	t.Helper()
	for _, line := range l.all() {
		if len(line) > max || strings.ContainsAny(line, "\n\r") {
			t.Errorf("log line of %d bytes or with a newline: %.200q", len(line), line)
		}
	}
}

func newTestServer(t *testing.T, cfg *ServerConfig, p *memPersistor) (*Server, *logRecorder) {
	t.Helper()
	reg := &Registry{Persistors: map[string]func(json.RawMessage) (ModelPersistor, error){
		"test.MemPersistor": func(json.RawMessage) (ModelPersistor, error) { return p, nil }}}
	srv, err := NewServer(cfg, reg)
	if err != nil {
		t.Fatal(err)
	}
	log := &logRecorder{t: t}
	srv.Logf = log.logf
	return srv, log
}

// heapPeak samples HeapInuse until stop is called, which returns the peak.
func heapPeak() (stop func() uint64) {
	var peak atomic.Uint64
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
			select {
			case <-done:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	return func() uint64 { close(done); <-finished; return peak.Load() }
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
	srv, log := newTestServer(t, testServerConfig(1, 1, 0), &memPersistor{init: initModel()})
	addr, done := serveOn(t, srv)
	defer srv.Stop()
	conn := dialBomb(t, addr, bomb)
	defer conn.Close()
	stop := heapPeak()
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
	if n := srv.liveClients(); n != 0 {
		t.Errorf("%d client(s) registered", n)
	}
	log.check(t, 300)
	good := &Client{Name: "good", Target: addr, Tasks: map[string]Executor{"train": addExecutor{delta: 1, steps: 1}}, Gzip: true}
	if err := good.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// Names are checked: too long, empty, or holding a newline (which forged
// log lines) are refused with InvalidArgument and not logged raw.
func TestRegisterRefusesBadNames(t *testing.T) {
	srv, log := newTestServer(t, testServerConfig(1, 1, 0), &memPersistor{init: initModel()})
	addr, _ := serveOn(t, srv)
	defer srv.Stop()
	conn, _ := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	defer conn.Close()
	fl := fedlearn.NewFederatedTrainingClient(conn)
	for _, req := range []*fedlearn.ClientLogin{
		{ClientName: ""},
		{ClientName: "site-1\n2026-01-01 server: round 1/1 done"},
		{ClientName: strings.Repeat("s", MaxNameBytes+1)},
		{ClientName: "site\x1b[2J"},
		{ClientName: "site-1", Meta: &fedlearn.MetaData{Project: &fedlearn.MetaData_Project{Name: "p\nq"}}},
	} {
		_, err := fl.Register(context.Background(), req)
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("Register(%.40q): %v", req.ClientName, err)
		}
		if strings.ContainsAny(status.Convert(err).Message(), "\n\x1b") {
			t.Errorf("error holds the raw name: %q", err)
		}
	}
	if _, err := fl.Register(context.Background(), &fedlearn.ClientLogin{ClientName: "admin@nvidia.com"}); err != nil {
		t.Errorf("a provisioned name was refused: %v", err)
	}
	log.check(t, 300)
}

// An uncompressed small request over its limit is refused too, and a SubmitUpdate
// of a normal model passes (its limit is the model's).
func TestRequestLimitsPerMessage(t *testing.T) {
	name, limit := requestLimit(&fedlearn.Token{})
	if limit != maxSmallRequestBytes || name != "Heartbeat" {
		t.Fatalf("Heartbeat limit %s %d", name, limit)
	}
	if _, limit := requestLimit(&fedlearn.Contribution{}); limit < MaxPickleBytes {
		t.Fatalf("SubmitUpdate limit %d below MaxPickleBytes", limit)
	}
	srv, _ := newTestServer(t, testServerConfig(1, 1, 0), &memPersistor{init: initModel()})
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
	p := &memPersistor{init: initModel()}
	srv, log := newTestServer(t, testServerConfig(2, 2, 0), p)
	srv.uploads.submitRecv, srv.uploads.smallRecv = 500*time.Millisecond, 500*time.Millisecond
	addr, done := serveOn(t, srv)
	defer srv.Stop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ended := silentStreams(t, ctx, addr, submitMethod, 12)
	time.Sleep(100 * time.Millisecond)

	conn, _ := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	defer conn.Close()
	start := time.Now()
	_, err := fedlearn.NewFederatedTrainingClient(conn).SubmitUpdate(metadata.AppendToOutgoingContext(context.Background(), tokenHeader, "forged"),
		&fedlearn.Contribution{Client: &fedlearn.ClientState{Token: "forged"}})
	if status.Code(err) != codes.Unauthenticated || time.Since(start) > time.Second {
		t.Fatalf("forged metadata token: %v after %s", err, time.Since(start))
	}

	start = time.Now()
	shows := withTokenMetadata(&Client{Name: "site-1", Target: addr, Tasks: map[string]Executor{"train": addExecutor{delta: 1, steps: 1}}, Logf: t.Logf})
	hides := &Client{Name: "site-2", Target: addr, Tasks: map[string]Executor{"train": addExecutor{delta: 1, steps: 1}}, Logf: t.Logf}
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
	if len(p.saved) != 2 {
		t.Fatalf("%d models saved", len(p.saved))
	}
	log.check(t, 300)
}

// The attacks (items 1, 2, 3, 5, 6), from 127.0.0.1 and bounded in
// count and time, while two clients run two rounds: the run completes,
// the server stays up and its heap in use stays under 256 MiB.
func TestServerSurvivesScriptedAttack(t *testing.T) {
	const heapBound = 256 << 20
	p := &memPersistor{init: initModel()}
	srv, log := newTestServer(t, testServerConfig(2, 2, 0), p)
	srv.uploads.submitRecv, srv.uploads.smallRecv = time.Second, time.Second
	addr, done := serveOn(t, srv)
	defer srv.Stop()
	attackCtx, stopAttack := context.WithCancel(context.Background())
	defer stopAttack()
	stop := heapPeak()

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
			_, err := fl.SubmitUpdate(metadata.AppendToOutgoingContext(attackCtx, tokenHeader, reg.Token), &fedlearn.Contribution{Client: &fedlearn.ClientState{Token: reg.Token},
				Data: &fedlearn.ModelData{Params: map[string]*fedlearn.NDArray{"data": {Ndarray: data}}}})
			return err
		}
	}
	// Item 1: an 8 TiB numpy shape with 8 bytes of data.
	attack("numpy shape bomb", 3, submit(numpyShapeBomb(t)))
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
		_, err := forger.GetTask(metadata.AppendToOutgoingContext(attackCtx, tokenHeader, "forged"), &fedlearn.ClientState{Token: "forged"})
		return err
	})
	// Item 2: billion laughs; item 6: a 1 MiB LONG4 and a 4-million-digit LONG.
	attack("billion laughs", 2, submit(billionLaughs(80)))
	attack("LONG4 of 1 MiB", 1, submit(bigLong4(1<<20)))
	attack("LONG of 4M digits", 1, submit(bigDecimalLong(4_000_000)))

	// Item 5: header-only streams without a token, to every gated pool.
	time.Sleep(100 * time.Millisecond)
	silent := silentStreams(t, attackCtx, addr, submitMethod, 12)
	silentTasks := silentStreams(t, attackCtx, addr, getTaskMethod, 12)
	silentRegs := silentStreams(t, attackCtx, addr, registerMethod, 12)
	time.Sleep(100 * time.Millisecond)

	start := time.Now()
	var clients []*Client
	for i := 1; i <= 2; i++ {
		clients = append(clients, withTokenMetadata(&Client{Name: fmt.Sprintf("site-%d", i), Target: addr, Gzip: i == 1,
			Tasks: map[string]Executor{"train": addExecutor{delta: 1, steps: 1}}, Logf: t.Logf}))
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
	if len(p.saved) != 2 {
		t.Fatalf("%d models saved", len(p.saved))
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("the run took %s under attack", d)
	}
	log.check(t, 400)
}

// The one-job server ends its run as NVFlare's does: a client that polls
// the admin channel is told to shut down only after it fetched __end_run__
// and its app reports stopped (NVFlare's client kills its training process
// on shutdown, and talks to it while it exits).
func TestEndRunFetchedBeforeShutdown(t *testing.T) {
	p := &memPersistor{init: initModel()}
	srv, _ := newTestServer(t, testServerConfig(1, 1, 0), p)
	addr, done := serveOn(t, srv)
	srv.EndGrace = 5 * time.Second
	defer srv.Stop()
	conn, _ := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	defer conn.Close()
	fl, ac := fedlearn.NewFederatedTrainingClient(conn), admin.NewAdminCommunicatingClient(conn)
	reg, err := fl.Register(context.Background(), &fedlearn.ClientLogin{ClientName: "site-1"})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var events []string
	ended := false // the training process fetched __end_run__
	note := func(e string) { mu.Lock(); events = append(events, e); mu.Unlock() }
	pollDone := make(chan struct{})
	go func() { // the parent process: polls the admin channel
		defer close(pollDone)
		asked := 0
		for {
			msgs, err := ac.Retrieve(context.Background(), &admin.Client{ClientName: reg.Token})
			if err != nil {
				return
			}
			for _, m := range msgs.GetMessage() {
				switch m.Topic {
				case TopicShutdown:
					note(m.Topic)
					return
				case TopicCheckStatus:
					// The worker takes two more questions to exit after __end_run__.
					mu.Lock()
					status := "started"
					if ended {
						if asked++; asked > 2 {
							status = "stopped"
						}
					}
					mu.Unlock()
					if status == "stopped" {
						note(status)
					}
					body, _ := json.Marshal(map[string]string{"app_name": "app", "run_number": "1", "status": status})
					ac.SendReply(context.Background(), &admin.Reply{ClientName: reg.Token, Message: &admin.Message{Id: newUUID(),
						Topic: "reply_" + m.Topic, BodyType: "str", Body: body, Headers: map[string]string{"_refMsgId": m.Id}}})
				default:
					note(m.Topic)
				}
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	// The training process: one task, then a pause before the next GetTask.
	state := &fedlearn.ClientState{Token: reg.Token}
	var task *fedlearn.CurrentTask
	for task == nil || task.TaskName == TaskTryAgain {
		if task, err = fl.GetTask(context.Background(), state); err != nil {
			t.Fatal(err)
		}
	}
	in, err := DecodeShareable(task.Data.Params["data"].Ndarray)
	if err != nil {
		t.Fatal(err)
	}
	res, _ := addExecutor{delta: 1, steps: 1}.Execute(context.Background(), task.TaskName, in, &FLContext{})
	res.SetHeader(HeaderCookieJar, in.CookieJar())
	data, _ := EncodeShareable(res)
	if _, err := fl.SubmitUpdate(context.Background(), &fedlearn.Contribution{Client: state,
		Data: &fedlearn.ModelData{Params: map[string]*fedlearn.NDArray{"data": {Ndarray: data}}}}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond) // NVFlare's client asks again after a while
	note("GetTask")
	end, err := fl.GetTask(context.Background(), state)
	if err != nil || end.TaskName != TaskEndRun {
		t.Fatalf("after the last round: %v %v", end.GetTaskName(), err)
	}
	mu.Lock()
	ended = true
	mu.Unlock()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	<-pollDone
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(events, " ") != "GetTask stopped "+TopicShutdown {
		t.Fatalf("events %v: shutdown must follow __end_run__ and the app's stop", events)
	}
}

// A failed result's reason (task_error) reaches the server's log, bounded
// and escaped, naming the site and the task; the round's error counts
// rounds from 1, as progress does.
func TestFailedResultReasonLogged(t *testing.T) {
	srv, log := newTestServer(t, testServerConfig(1, 1, 0), &memPersistor{init: initModel()})
	addr, done := serveOn(t, srv)
	defer srv.Stop()
	conn, _ := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	defer conn.Close()
	fl := fedlearn.NewFederatedTrainingClient(conn)
	reg, _ := fl.Register(context.Background(), &fedlearn.ClientLogin{ClientName: "site-3"})
	state := &fedlearn.ClientState{Token: reg.Token}
	var task *fedlearn.CurrentTask
	var err error
	for task == nil || task.TaskName == TaskTryAgain {
		if task, err = fl.GetTask(context.Background(), state); err != nil {
			t.Fatal(err)
		}
	}
	in, _ := DecodeShareable(task.Data.Params["data"].Ndarray)
	res := NewShareable()
	res.SetHeader(HeaderRC, RCExecutionException)
	res.SetHeader(HeaderCookieJar, in.CookieJar())
	res.SetHeader(HeaderTaskError, "no images under /nowhere\nforged line "+strings.Repeat("x", 5000))
	data, _ := EncodeShareable(res)
	if _, err := fl.SubmitUpdate(context.Background(), &fedlearn.Contribution{Client: state,
		Data: &fedlearn.ModelData{Params: map[string]*fedlearn.NDArray{"data": {Ndarray: data}}}}); err != nil {
		t.Fatal(err)
	}
	err = <-done
	if err == nil || !strings.Contains(err.Error(), "round 1/1") {
		t.Fatalf("server: %v, want the round counted from 1", err)
	}
	found := false
	for _, line := range log.all() {
		if strings.Contains(line, "client site-3: task train (round 1/1) failed with EXECUTION_EXCEPTION: no images under /nowhere\\nforged line") {
			found = true
		}
	}
	if !found {
		t.Errorf("no log line with the reason: %q", log.all())
	}
	log.check(t, 400)
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
	srv, _ := newTestServer(t, testServerConfig(1, 1, 0), &memPersistor{init: initModel()})
	addr, done := serveOn(t, srv)
	defer srv.Stop()
	conn, _ := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	defer conn.Close()
	name := strings.Repeat("a", 64<<20)
	runtime.GC()
	stop := heapPeak()
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
	p := &memPersistor{init: big}
	srv2, _ := newTestServer(t, testServerConfig(1, 1, 0), p)
	addr2, done2 := serveOn(t, srv2)
	defer srv2.Stop()
	good := &Client{Name: "good", Target: addr2, Tasks: map[string]Executor{"train": addExecutor{delta: 1, steps: 1}}}
	if err := good.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-done2; err != nil || len(p.saved) != 1 {
		t.Fatalf("8 MiB model: %v, %d saved", err, len(p.saved))
	}
	good1 := &Client{Name: "good", Target: addr, Tasks: map[string]Executor{"train": addExecutor{delta: 1, steps: 1}}}
	if err := good1.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// rawSite is a client speaking the wire by hand, to send crafted results.
type rawSite struct {
	fl    fedlearn.FederatedTrainingClient
	state *fedlearn.ClientState
}

func newRawSite(t *testing.T, addr, name string) *rawSite {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fl := fedlearn.NewFederatedTrainingClient(conn)
	reg, err := fl.Register(context.Background(), &fedlearn.ClientLogin{ClientName: name})
	if err != nil {
		t.Fatal(err)
	}
	return &rawSite{fl: fl, state: &fedlearn.ClientState{ClientName: name, Token: reg.Token}}
}

// task waits for the round's task.
func (r *rawSite) task(t *testing.T) *Shareable {
	t.Helper()
	for {
		task, err := r.fl.GetTask(context.Background(), r.state)
		if err != nil {
			t.Fatal(err)
		}
		if task.TaskName != TaskTryAgain {
			in, err := DecodeShareable(task.Data.Params["data"].Ndarray)
			if err != nil {
				t.Fatal(err)
			}
			return in
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// submit sends res as the result of task in.
func (r *rawSite) submit(t *testing.T, in, res *Shareable) error {
	t.Helper()
	res.SetHeader(HeaderCookieJar, in.CookieJar())
	res.SetHeader(HeaderTaskName, "train")
	data, err := EncodeShareable(res)
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.fl.SubmitUpdate(context.Background(), &fedlearn.Contribution{Client: r.state,
		Data: &fedlearn.ModelData{Params: map[string]*fedlearn.NDArray{"data": {Ndarray: data}}}})
	return err
}

// weightsResult is a WEIGHTS result of sd with NUM_STEPS_CURRENT_ROUND
// steps (none when steps is nil).
func weightsResult(sd *persistor.StateDict, steps any) *Shareable {
	meta := &pickle.Dict{}
	if steps != nil {
		meta.Set(MetaNumStepsCurrentRound, steps)
	}
	res := NewShareable()
	res.DXO = WeightsDXO(sd, meta)
	return res
}

// modelWith is initModel with w replaced.
func modelWith(w ...float32) *persistor.StateDict {
	sd := initModel()
	sd.Set("w", persistor.FromFloat32(w, 2, 2))
	return sd
}

// with sets name in sd and returns sd.
func with(sd *persistor.StateDict, name string, t *persistor.Tensor) *persistor.StateDict {
	sd.Set(name, t)
	return sd
}

// refusedThenGood runs one round in which evil sends bad and an honest site
// then sends w = 5 (steps 1): bad must be refused, with a log line naming
// the site, the task and the round and holding want; the round must
// complete on the honest result alone, and the run must report evil lost.
func refusedThenGood(t *testing.T, bad *Shareable, want string) {
	t.Helper()
	p := &memPersistor{init: initModel()}
	srv, log := newTestServer(t, testServerConfig(1, 1, 5), p)
	addr, done := serveOn(t, srv)
	defer srv.Stop()
	evil, good := newRawSite(t, addr, "evil"), newRawSite(t, addr, "good")
	in := evil.task(t)
	err := evil.submit(t, in, bad)
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), want) {
		t.Fatalf("bad result: %v, want InvalidArgument with %q", err, want)
	}
	if err := good.submit(t, good.task(t), weightsResult(modelWith(5, 5, 5, 5), int64(1))); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if len(p.saved) != 1 {
		t.Fatalf("%d models saved", len(p.saved))
	}
	if w, _ := p.saved[0].Get("w").Float32s(); fmt.Sprint(w) != "[5 5 5 5]" {
		t.Fatalf("w = %v: the refused result leaked in", w)
	}
	found := false
	for _, line := range log.all() {
		if strings.Contains(line, "client evil: task train (round 1/1): result refused: ") && strings.Contains(line, want) {
			found = true
		}
	}
	if !found {
		t.Errorf("no log line naming site, task, round and %q: %q", want, log.all())
	}
	log.check(t, 400)
	lost, sites := srv.LostSites()
	if len(lost) != 1 || sites != 2 || !strings.HasPrefix(lost[0], "evil: task train (round 1/1): result refused: ") {
		t.Errorf("lost sites %q of %d", lost, sites)
	}
}

// A result holding NaN or an infinity (or a value no float32 holds) is
// refused whole; the others carry the round.
func TestNonFiniteResultRefused(t *testing.T) {
	huge := with(initModel(), "bn.num_batches_tracked", persistor.FromFloat64([]float64{1e300}))
	for _, c := range []struct {
		name string
		sd   *persistor.StateDict
		want string
	}{
		{"NaN", modelWith(1, 2, float32(math.NaN()), 4), `array "w" element 2 is NaN`},
		{"+Inf", modelWith(float32(math.Inf(1)), 2, 3, 4), `array "w" element 0 is +Inf`},
		{"-Inf", modelWith(1, 2, 3, float32(math.Inf(-1))), `array "w" element 3 is -Inf`},
		{"1e300", huge, `array "bn.num_batches_tracked" element 0 is 1e+300`},
	} {
		t.Run(c.name, func(t *testing.T) { refusedThenGood(t, weightsResult(c.sd, int64(1)), c.want) })
	}
}

// NUM_STEPS_CURRENT_ROUND must be a whole number from 1 to 2^40: a
// negative, zero, NaN, infinite, fractional, huge or non-numeric weight is
// refused, a missing one weighs 1 (as NVFlare's aggregator has it).
func TestBadStepCountRefused(t *testing.T) {
	for _, steps := range []any{int64(-3), int64(0), math.NaN(), math.Inf(1), math.Inf(-1), 2.5, 1e30, int64(1) << 41,
		new(big.Int).Lsh(big.NewInt(1), 100), "ten", true} {
		_, _, err := resultWeight(weightsResult(initModel(), steps).DXO)
		if err == nil || !strings.Contains(err.Error(), MetaNumStepsCurrentRound) {
			t.Errorf("steps %v (%T): %v", steps, steps, err)
		}
	}
	for steps, want := range map[any]float64{int64(7): 7, 3.0: 3, int64(1) << 40: 1 << 40} {
		if w, _, err := resultWeight(weightsResult(initModel(), steps).DXO); err != nil || w != want {
			t.Errorf("steps %v: %v %v", steps, w, err)
		}
	}
	if w, present, err := resultWeight(weightsResult(initModel(), nil).DXO); w != 1 || present || err != nil {
		t.Errorf("no steps: %v %v %v", w, present, err)
	}
	t.Run("server", func(t *testing.T) {
		refusedThenGood(t, weightsResult(modelWith(100, 100, 100, 100), int64(-1000)), "NUM_STEPS_CURRENT_ROUND is -1000")
	})
	t.Run("NaN", func(t *testing.T) {
		refusedThenGood(t, weightsResult(modelWith(100, 100, 100, 100), math.NaN()), "NUM_STEPS_CURRENT_ROUND is NaN")
	})
}

// A result's arrays must be the model's: the same names, each once, the
// same shapes, a dtype of the same kind.
func TestMismatchedResultRefused(t *testing.T) {
	acc, _ := newAccumulator(initModel())
	w := persistor.FromFloat32([]float32{1, 2, 3, 4}, 2, 2)
	nb := persistor.FromInt64([]int64{3})
	for _, c := range []struct {
		name string
		data []NamedArray
		want string
	}{
		{"missing", []NamedArray{{"w", w}}, "result has 1 arrays, the model 2"},
		{"extra", []NamedArray{{"w", w}, {"bn.num_batches_tracked", nb}, {"x", w}}, "result has 3 arrays, the model 2"},
		{"unknown", []NamedArray{{"w", w}, {"x", nb}}, `unknown array "x"`},
		{"twice", []NamedArray{{"w", w}, {"w", w}}, `array "w" twice`},
		{"shape", []NamedArray{{"w", persistor.FromFloat32([]float32{1, 2, 3, 4}, 4)}, {"bn.num_batches_tracked", nb}}, `"w" has shape [4], the model [2 2]`},
		{"rank", []NamedArray{{"w", persistor.FromFloat32([]float32{1, 2, 3, 4}, 2, 2, 1)}, {"bn.num_batches_tracked", nb}}, `"w" has shape [2 2 1]`},
		{"dtype", []NamedArray{{"w", persistor.FromInt64([]int64{1, 2, 3, 4}, 2, 2)}, {"bn.num_batches_tracked", nb}}, `"w" is int64, the model's float32`},
		{"bool", []NamedArray{{"w", w}, {"bn.num_batches_tracked", &persistor.Tensor{DType: persistor.Bool, Data: []byte{1}}}}, `is bool`},
		{"short", []NamedArray{{"w", &persistor.Tensor{DType: persistor.Float32, Shape: []int{2, 2}, Data: make([]byte, 8)}}, {"bn.num_batches_tracked", nb}}, "has 8 bytes"},
		{"nil", []NamedArray{{"w", nil}, {"bn.num_batches_tracked", nb}}, `"w" is empty`},
	} {
		err := acc.add(&DXO{Kind: KindWeights, Data: c.data}, 1)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
	if acc.total != 0 || acc.sums["w"][0] != 0 {
		t.Fatal("a refused result changed the sums")
	}
	// A model's float64 buffer (num_batches_tracked after one aggregation)
	// comes back as a client's int64, and float32 weights as float64.
	acc, _ = newAccumulator(with(modelWith(1, 2, 3, 4), "bn.num_batches_tracked", persistor.FromFloat64([]float64{2})))
	if err := acc.add(&DXO{Kind: KindWeights, Data: []NamedArray{{"w", persistor.FromFloat64([]float64{1, 2, 3, 4}, 2, 2)}, {"bn.num_batches_tracked", nb}}}, 1); err != nil {
		t.Fatal(err)
	}
}

// A mean that is not finite is an error, never a global model (the bounds
// on results keep it from happening; this is the last line).
func TestNonFiniteMeanNotSaved(t *testing.T) {
	acc, _ := newAccumulator(initModel())
	acc.total = 1
	acc.sums["w"][1] = math.Inf(1)
	if _, err := acc.result(); err == nil || !strings.Contains(err.Error(), `"w" element 1 is +Inf`) {
		t.Fatalf("non-finite mean: %v", err)
	}
	acc.sums["w"][1] = 1e300 // finite in float64, not in float32
	if _, err := acc.result(); err == nil || !strings.Contains(err.Error(), `"w" element 1 is +Inf`) {
		t.Fatalf("mean beyond float32: %v", err)
	}
}

// A site that fails its task while another carries the round is reported
// lost, with the reason it gave; the round itself completes.
func TestLostSiteReported(t *testing.T) {
	p := &memPersistor{init: initModel()}
	srv, log := newTestServer(t, testServerConfig(1, 1, 5), p)
	addr, done := serveOn(t, srv)
	defer srv.Stop()
	bad, good := newRawSite(t, addr, "site-3"), newRawSite(t, addr, "site-1")
	failed := NewShareable()
	failed.SetHeader(HeaderRC, RCExecutionException)
	failed.SetHeader(HeaderTaskError, "no image could be read")
	if err := bad.submit(t, bad.task(t), failed); err != nil {
		t.Fatal(err)
	}
	if err := good.submit(t, good.task(t), weightsResult(modelWith(5, 5, 5, 5), int64(1))); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	lost, sites := srv.LostSites()
	want := "site-3: task train (round 1/1) failed with EXECUTION_EXCEPTION: no image could be read"
	if len(lost) != 1 || lost[0] != want || sites != 2 {
		t.Fatalf("lost %q of %d, want [%s] of 2", lost, sites, want)
	}
	found := false
	for _, line := range log.all() {
		found = found || strings.Contains(line, "run 1 lost 1 of 2 site(s): "+want)
	}
	if !found {
		t.Errorf("no summary line: %q", log.all())
	}
}

// FuzzAccumulate adds any decodable result to a round: whatever it holds,
// a result the accumulator takes leaves a finite mean, or none.
func FuzzAccumulate(f *testing.F) {
	for _, steps := range []any{int64(1), int64(-1), math.NaN(), 2.5, 1e30, nil} {
		b, _ := EncodeShareable(weightsResult(initModel(), steps))
		f.Add(b)
	}
	for _, sd := range []*persistor.StateDict{modelWith(float32(math.NaN()), 0, 0, 0), modelWith(float32(math.Inf(-1)), 0, 0, 0),
		with(initModel(), "bn.num_batches_tracked", persistor.FromFloat64([]float64{math.MaxFloat64}))} {
		b, _ := EncodeShareable(weightsResult(sd, int64(1<<40)))
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		sh, err := DecodeShareable(data)
		if err != nil || sh.DXO == nil {
			return
		}
		w, _, err := resultWeight(sh.DXO)
		if err != nil {
			return
		}
		acc, _ := newAccumulator(initModel())
		for range 3 {
			if acc.add(sh.DXO, w) != nil {
				return
			}
		}
		sd, err := acc.result()
		if err != nil {
			t.Fatalf("accepted results give no mean: %v", err)
		}
		for _, n := range sd.Names() {
			for i := range sd.Get(n).NumElements() {
				if x := sd.Get(n).Float64At(i); math.IsNaN(x) || math.IsInf(x, 0) {
					t.Fatalf("%s[%d] = %v", n, i, x)
				}
			}
		}
	})
}

// A site scoring a model NaN (or sending a metric JSON cannot hold) loses
// its cell, not every site's cross_val_results.json; the run reports it.
func TestCrossSiteNonFiniteMetricRefused(t *testing.T) {
	cfg := testServerConfig(2, 1, 0)
	cfg.Workflows = append(cfg.Workflows, Component{ID: "cross_site_validate", Path: PathCrossSiteModelEval,
		Args: json.RawMessage(`{"submit_model_timeout": 60, "validation_timeout": 60}`)})
	srv, log := newTestServer(t, cfg, &memPersistor{init: initModel()})
	srv.OutputDir = t.TempDir()
	addr, done := serveOn(t, srv)
	site1 := &siteExec{add: addExecutor{delta: 1, steps: 1}}
	site2 := &siteExec{add: addExecutor{delta: 4, steps: 1}, offset: math.NaN()}
	runToEnd(t, done,
		&Client{Name: "site-1", Target: addr, Tasks: map[string]Executor{"train": site1, "submit_model": site1, "validate": site1}},
		&Client{Name: "site-2", Target: addr, Tasks: map[string]Executor{"train": site2, "submit_model": site2, "validate": site2}})
	b, err := os.ReadFile(filepath.Join(srv.OutputDir, "cross_site_val", "cross_val_results.json"))
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]map[string]map[string]float64
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != "map[site-1:map[site-1:map[val_acc:2] site-2:map[val_acc:5]] site-2:map[site-1:map[] site-2:map[]]]" {
		t.Fatalf("results %s", b)
	}
	lost, _ := srv.LostSites()
	if len(lost) != 1 || !strings.Contains(lost[0], `site-2: cross-site task validate (scoring the model of site-`) || !strings.Contains(lost[0], `metric "val_acc" is NaN`) {
		t.Fatalf("lost %q", lost)
	}
	log.check(t, 400)
}
