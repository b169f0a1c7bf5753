package flare

import (
	"context"
	"sync"

	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/tap"

	"github.com/flarego/flarego/proto/fedlearn"
)

// uploadGate bounds how many SubmitUpdate calls the server receives at
// once. gRPC reads a whole message into memory before any handler runs, so
// without a bound 200 clients finishing together means 200 results (3.2 MB
// each for this model) in memory at once, although the aggregator keeps only
// its sums. The gate waits before the stream is accepted (a tap handle: the
// client's data stays in its own send buffers, flow control holding it) and
// opens again when the call ends (a stats handler).
// The same holds for GetTask's answers: each carries the global model, and
// answers waiting to be sent are in memory too; they get slots of their own.
type uploadGate struct {
	slots, taskSlots chan struct{}
}

func newUploadGate(n int) uploadGate {
	return uploadGate{slots: make(chan struct{}, n), taskSlots: make(chan struct{}, 2*n)}
}

type gateKey struct{}

type gateTicket struct {
	once  sync.Once
	slots chan struct{}
}

func (t *gateTicket) release() { t.once.Do(func() { <-t.slots }) }

var (
	submitMethod  = "/" + fedlearn.FederatedTraining_ServiceDesc.ServiceName + "/SubmitUpdate"
	getTaskMethod = "/" + fedlearn.FederatedTraining_ServiceDesc.ServiceName + "/GetTask"
)

func (g *uploadGate) acquire(ctx context.Context, info *tap.Info) (context.Context, error) {
	var slots chan struct{}
	switch info.FullMethodName {
	case submitMethod:
		slots = g.slots
	case getTaskMethod:
		slots = g.taskSlots
	default:
		return ctx, nil
	}
	select {
	case slots <- struct{}{}:
	case <-ctx.Done():
		return ctx, ctx.Err()
	}
	return context.WithValue(ctx, gateKey{}, &gateTicket{slots: slots}), nil
}

func (g *uploadGate) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }

func (g *uploadGate) HandleRPC(ctx context.Context, s stats.RPCStats) {
	if _, ok := s.(*stats.End); ok {
		if t, ok := ctx.Value(gateKey{}).(*gateTicket); ok {
			t.release()
		}
	}
}

func (g *uploadGate) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (g *uploadGate) HandleConn(context.Context, stats.ConnStats)                       {}
