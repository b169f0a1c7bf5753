package wire20

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/persistor"
	"github.com/flarego/flarego/proto/admin"
	"github.com/flarego/flarego/proto/fedlearn"
)

// uploadGate bounds how many calls the server receives at once (a
// ServerWire's gate: gRPC's tap handle and stats handler). gRPC reads
// a whole message into memory before any handler runs, so without a bound
// 200 clients finishing together means 200 results (3.2 MB each for this
// model) in memory at once, although the aggregator keeps only its sums.
// The gate waits before the stream is accepted (a tap handle: the client's
// data stays in its own send buffers, flow control holding it) and opens
// again when the call ends (a stats handler). GetTask's answers each carry
// the global model, and answers waiting to be sent are in memory too; they
// get slots of their own, and every other method shares a third pool.
//
// The gate is also where a peer is held to account before any of its bytes
// are read:
//   - a call that carries a token in its metadata (x-custom-token, as
//     NVFlare's secure mode sends it) is refused at once if the token is
//     unknown, and takes no slot;
//   - a call without a known token may hold at most half of each pool, so
//     streams that never authenticate cannot lock registered clients out,
//     and one token at most perTokenSlots of a pool (our client has one
//     call of each kind open at a time);
//   - every call must deliver its request within a receive deadline, or
//     it is cancelled and its slot freed (a silent stream no longer keeps
//     it forever);
//   - a call to a method the server does not serve is refused as
//     Unimplemented and takes no slot;
//   - a call that finds no slot within gateWait is refused as Unavailable
//     (clients retry), not queued without end.
type uploadGate struct {
	submit, task, other gatePool
	// known says whether a token belongs to a registered client.
	known func(token string) bool
	// submitRecv and smallRecv are the receive deadlines of SubmitUpdate
	// (a model on the wire) and of every other request (a few hundred bytes).
	submitRecv, smallRecv time.Duration
	wait                  time.Duration

	// model is the model a SubmitUpdate's result must match now (the
	// handler's ResultModel), nil before there is one; the request is
	// bounded by its size (contributionBytesFor, kept in limit).
	model func() *persistor.StateDict
	limit atomic.Pointer[modelLimit]

	mu    sync.Mutex
	byTok map[tokenPool]int // slots held, by token and pool

	// conns are the server's connections by remote address (limitListener).
	conns sync.Map
}

type tokenPool struct {
	token string
	pool  *gatePool
}

// gatePool is one pool of slots; anon is the share open to calls without
// a known token.
type gatePool struct {
	all, anon chan struct{}
}

func newGatePool(n int) gatePool {
	return gatePool{all: make(chan struct{}, n), anon: make(chan struct{}, max(1, n/2))}
}

// Default gate sizes and deadlines (see the README's Security section).
const (
	submitSlots       = 4
	taskSlots         = 8
	otherSlots        = 16
	perTokenSlots     = 2
	submitRecvTimeout = 60 * time.Second
	smallRecvTimeout  = 10 * time.Second
	gateWait          = 60 * time.Second
)

func newUploadGate() *uploadGate {
	return &uploadGate{submit: newGatePool(submitSlots), task: newGatePool(taskSlots), other: newGatePool(otherSlots),
		submitRecv: submitRecvTimeout, smallRecv: smallRecvTimeout, wait: gateWait}
}

// modelLimit is contributionBytesFor(model).
type modelLimit struct {
	model *persistor.StateDict
	bytes int
}

// contributionLimit is the bound on a SubmitUpdate now; it is worked out
// once per model.
func (g *uploadGate) contributionLimit() int {
	var m *persistor.StateDict
	if g.model != nil {
		m = g.model()
	}
	if m == nil {
		return minContributionBytes
	}
	if l := g.limit.Load(); l != nil && l.model == m {
		return l.bytes
	}
	l := &modelLimit{model: m, bytes: contributionBytesFor(m)}
	g.limit.Store(l)
	return l.bytes
}

type gateKey struct{}

// gateTicket is one call's place in the gate.
type gateTicket struct {
	once     sync.Once
	gate     *uploadGate
	pool     *gatePool
	token    string // "" for a call without a known token
	anon     bool
	deadline *time.Timer // cancels the call if its request does not arrive in time
	conn     *limitConn  // its connection, whose read credit it raised
	large    int64       // the credit to take back at the end (SubmitUpdate)
	// got is set once the request arrived: from then on the call is in
	// gRPC's method handling, which always ends with stats.End.
	got atomic.Bool
}

func (t *gateTicket) received() { t.got.Store(true); t.deadline.Stop() }

// streamEnded frees the slot of a stream that ended before its request
// arrived. gRPC sends stats.End only for calls that reached a method
// handler; a stream it drops before (or one cancelled while it waits for
// its request) would otherwise hold its slot for good. A call whose request
// arrived keeps its slot until stats.End: its handler may still be
// decoding it after the peer went away.
func (t *gateTicket) streamEnded() {
	if !t.got.Load() {
		t.release()
	}
}

func (t *gateTicket) release() {
	t.once.Do(func() {
		t.deadline.Stop()
		if t.conn != nil && t.large > 0 {
			t.conn.ungrant(t.large)
		}
		<-t.pool.all
		if t.anon {
			<-t.pool.anon
		} else {
			t.gate.untake(t.token, t.pool)
		}
	})
}

// take counts a slot of pool for token, false if it holds its share.
func (g *uploadGate) take(token string, pool *gatePool) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	k := tokenPool{token, pool}
	if g.byTok[k] >= perTokenSlots {
		return false
	}
	if g.byTok == nil {
		g.byTok = map[tokenPool]int{}
	}
	g.byTok[k]++
	return true
}

func (g *uploadGate) untake(token string, pool *gatePool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	k := tokenPool{token, pool}
	if g.byTok[k]--; g.byTok[k] <= 0 {
		delete(g.byTok, k)
	}
}

// servedMethods are the methods the server has handlers for. A call to
// any other is answered Unimplemented by gRPC without a handler, hence
// without stats.End: the gate refuses it before it takes a slot.
var servedMethods = func() map[string]bool {
	m := map[string]bool{}
	for _, d := range []grpc.ServiceDesc{fedlearn.FederatedTraining_ServiceDesc, admin.AdminCommunicating_ServiceDesc} {
		for _, md := range d.Methods {
			m["/"+d.ServiceName+"/"+md.MethodName] = true
		}
		for _, sd := range d.Streams {
			m["/"+d.ServiceName+"/"+sd.StreamName] = true
		}
	}
	return m
}()

func (g *uploadGate) acquire(ctx context.Context, info *tap.Info) (context.Context, error) {
	if !servedMethods[info.FullMethodName] {
		return ctx, status.Errorf(codes.Unimplemented, "unknown method %s", flare.LogSafe(info.FullMethodName))
	}
	pool, recv, limit := &g.other, g.smallRecv, int64(maxSmallRequestBytes)
	switch info.FullMethodName {
	case SubmitMethod:
		pool, recv, limit = &g.submit, g.submitRecv, int64(g.contributionLimit())
	case GetTaskMethod:
		pool = &g.task
	case SendReplyMethod:
		limit = maxReplyBytes
	}
	anon, tok := true, ""
	if tok = TokenFromMetadata(info.Header); tok != "" && info.FullMethodName != RegisterMethod && g.known != nil {
		if !g.known(tok) {
			return ctx, status.Error(codes.Unauthenticated, "unknown token: register again")
		}
		if !g.take(tok, pool) {
			return ctx, status.Errorf(codes.Unavailable, "this client has %d calls of this kind open already; try again when one ends", perTokenSlots)
		}
		anon = false
	}
	// giveBack undoes what was taken when no slot is found.
	giveBack := func() {
		if anon {
			<-pool.anon
		} else {
			g.untake(tok, pool)
		}
	}
	timer := time.NewTimer(g.wait)
	defer timer.Stop()
	if anon {
		select {
		case pool.anon <- struct{}{}:
		case <-timer.C:
			return ctx, status.Error(codes.Unavailable, "server busy: no slot for a call without a known token; try again")
		case <-ctx.Done():
			return ctx, ctx.Err()
		}
	}
	select {
	case pool.all <- struct{}{}:
	case <-timer.C:
		giveBack()
		return ctx, status.Error(codes.Unavailable, "server busy; try again")
	case <-ctx.Done():
		giveBack()
		return ctx, ctx.Err()
	}
	ctx, cancel := context.WithCancel(ctx)
	t := &gateTicket{gate: g, pool: pool, token: tok, anon: anon, deadline: time.AfterFunc(recv, cancel)}
	if c, ok := ctx.Value(connKey{}).(*limitConn); ok {
		t.conn = c
		c.grant(limit, pool == &g.submit)
		if pool == &g.submit {
			t.large = limit
		}
	}
	context.AfterFunc(ctx, t.streamEnded)
	return context.WithValue(ctx, gateKey{}, t), nil
}

func (g *uploadGate) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }

func (g *uploadGate) HandleRPC(ctx context.Context, s stats.RPCStats) {
	t, ok := ctx.Value(gateKey{}).(*gateTicket)
	if !ok {
		return
	}
	switch s.(type) {
	case *stats.InPayload:
		t.received() // the handler runs (and answers) without a deadline
	case *stats.End:
		t.release()
	}
}

type connKey struct{}

// TagConn finds the connection's limitConn, whose read credit the calls
// the gate admits raise.
func (g *uploadGate) TagConn(ctx context.Context, info *stats.ConnTagInfo) context.Context {
	if info.RemoteAddr == nil {
		return ctx
	}
	if c, ok := g.conns.Load(info.RemoteAddr.String()); ok {
		return context.WithValue(ctx, connKey{}, c)
	}
	return ctx
}
func (g *uploadGate) HandleConn(context.Context, stats.ConnStats) {}
