package wire20

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/proto/fedlearn"
)

// blackhole forwards TCP connections to a target until cut: from then on
// the connections it holds pass nothing either way and stay open, as a
// network cut leaves them (no reset reaches either end). Connections made
// after the cut pass again.
type blackhole struct {
	lis    net.Listener
	target string
	mu     sync.Mutex
	conns  []*holeConn
}

type holeConn struct{ cut atomic.Bool }

func newBlackhole(t *testing.T, target string) *blackhole {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &blackhole{lis: lis, target: target}
	t.Cleanup(func() { lis.Close() })
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			h := &holeConn{}
			b.mu.Lock()
			b.conns = append(b.conns, h)
			b.mu.Unlock()
			t.Cleanup(func() { c.Close(); s.Close() })
			pipe := func(dst, src net.Conn) {
				buf := make([]byte, 32<<10)
				for {
					n, err := src.Read(buf)
					if err != nil {
						return
					}
					if !h.cut.Load() {
						if _, err := dst.Write(buf[:n]); err != nil {
							return
						}
					}
				}
			}
			go pipe(s, c)
			go pipe(c, s)
		}
	}()
	return b
}

// cut silences every connection made so far.
func (b *blackhole) cut() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, h := range b.conns {
		h.cut.Store(true)
	}
}

type slowTaskServer struct {
	fedlearn.UnimplementedFederatedTrainingServer
	calls   atomic.Int32
	arrived chan struct{}
}

func (s *slowTaskServer) GetTask(ctx context.Context, _ *fedlearn.ClientState) (*fedlearn.CurrentTask, error) {
	if s.calls.Add(1) == 1 {
		s.arrived <- struct{}{}
		time.Sleep(500 * time.Millisecond) // the answer goes into the cut
	}
	return &fedlearn.CurrentTask{TaskName: flare.TaskTryAgain}, nil
}

// A call in flight when the network goes away fails once the client's
// pings go unanswered, rather than waiting for ever; the next call goes
// over a new connection. (The federation of containers hung this way
// after a site's network was cut: its GetTask never returned.)
func TestCallOnDeadConnectionFails(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: time.Second}))
	srv := &slowTaskServer{arrived: make(chan struct{}, 1)}
	fedlearn.RegisterFederatedTrainingServer(gs, srv)
	go gs.Serve(lis)
	defer gs.Stop()
	hole := newBlackhole(t, lis.Addr().String())

	tr, err := Wire{Keepalive: keepalive.ClientParameters{Time: time.Second, Timeout: time.Second}}.Dial(hole.lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	s := flare.Session{Name: "site-1", Token: "t"}
	go func() { <-srv.arrived; hole.cut() }()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	_, err = tr.GetTask(ctx, s)
	var ce *flare.CallError
	if !errors.As(err, &ce) || ce.Kind != flare.Unavailable {
		t.Fatalf("call across the cut: %v, want Unavailable", err)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Fatalf("the call took %s to fail", d)
	}
	t.Logf("call on the dead connection failed after %s: %v", time.Since(start).Round(100*time.Millisecond), err)
	task, err := tr.GetTask(ctx, s)
	if err != nil || task.Name != flare.TaskTryAgain {
		t.Fatalf("next call: %v, %v", task, err)
	}
}
