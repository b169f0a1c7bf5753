package conn

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/cellnet/msgpk"
	"github.com/flarego/flarego/flare/cellnet/sfm"
	"github.com/flarego/flarego/proto/streamer"
)

// A Server takes CellNet connections on a gRPC server, as NVFlare's
// server does on its fed_learn port: each streamer.Streamer/Stream call
// that opens with a HELLO naming its cell is answered READY with Name and
// becomes a *Conn, which Accept serves; the call ends when Accept returns
// (or the Conn is closed).
type Server struct {
	streamer.UnimplementedStreamerServer

	// Name is this end's cell name ("server").
	Name string
	// Accept serves one connection; it runs on the call's goroutine.
	Accept func(c *Conn)
	// MaxConns bounds the connections served at once (default 1024); one
	// more is refused before its handshake.
	MaxConns int

	mu    sync.Mutex
	conns int
}

// Register adds the Streamer service to g. g should be made with
// [ServerOptions]: NVFlare's message limit and no compression.
func (s *Server) Register(g *grpc.Server) { streamer.RegisterStreamerServer(g, s) }

// ServerOptions are the gRPC server options of a CellNet listener: frames
// up to sfm.MaxFrameBytes; keepalive pings from clients are allowed every
// 10 s (flarego's sites ping after DefaultKeepalive.Time without traffic),
// and the server pings a connection silent for a minute, dropping it when
// 20 s pass without an answer.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.MaxRecvMsgSize(sfm.MaxFrameBytes + 64), grpc.MaxSendMsgSize(sfm.MaxFrameBytes + 64),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: time.Minute, Timeout: 20 * time.Second})}
}

// ErrTooManyConns is the refusal of a connection past MaxConns.
var ErrTooManyConns = errors.New("cellnet: too many connections")

// Stream serves one call.
func (s *Server) Stream(st grpc.BidiStreamingServer[streamer.Frame, streamer.Frame]) error {
	max := s.MaxConns
	if max <= 0 {
		max = 1024
	}
	s.mu.Lock()
	if s.conns >= max {
		s.mu.Unlock()
		return ErrTooManyConns
	}
	s.conns++
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.conns--
		s.mu.Unlock()
	}()
	ctx, cancel := context.WithCancel(st.Context())
	defer cancel()
	c := &Conn{stream: st, close: func() error { cancel(); return nil }}
	peer, err := c.answerHello(ctx, s.Name)
	if err != nil {
		return err
	}
	c.Peer = peer
	done := make(chan struct{})
	go func() {
		defer close(done)
		if s.Accept != nil {
			s.Accept(c)
		}
	}()
	select {
	case <-done:
	case <-ctx.Done():
		<-done
	}
	return nil
}

// answerHello waits for the peer's HELLO (HandshakeTimeout at most) and
// answers READY; it returns the peer's cell name.
func (c *Conn) answerHello(ctx context.Context, local string) (string, error) {
	type result struct {
		f   *sfm.Frame
		err error
	}
	got := make(chan result, 1)
	go func() { f, err := c.recv(); got <- result{f, err} }()
	t := time.NewTimer(HandshakeTimeout)
	defer t.Stop()
	var f *sfm.Frame
	select {
	case r := <-got:
		if r.err != nil {
			return "", r.err
		}
		f = r.f
	case <-t.C:
		return "", fmt.Errorf("cellnet handshake: no HELLO within %s", HandshakeTimeout)
	case <-ctx.Done():
		return "", ctx.Err()
	}
	if f.Type != sfm.TypeHello {
		return "", fmt.Errorf("cellnet handshake: the peer sent %s, not HELLO", sfm.TypeName(f.Type))
	}
	v, err := msgpk.Unmarshal(f.Payload)
	m, _ := v.(msgpk.Map)
	if err != nil || m == nil {
		return "", errors.New("cellnet handshake: HELLO is not a map")
	}
	name := m.String("endpoint_name")
	if err := flare.CheckName("cell name", name); err != nil {
		return "", fmt.Errorf("cellnet handshake: %w", err)
	}
	ready, err := msgpk.Marshal(msgpk.Map{{Key: "endpoint_name", Value: local},
		{Key: "timestamp", Value: float64(time.Now().UnixNano()) / 1e9}, {Key: "fqcn", Value: local}})
	if err != nil {
		return "", err
	}
	if err := c.Send(&sfm.Frame{Type: sfm.TypeReady, StreamID: 1, Payload: ready}); err != nil {
		return "", err
	}
	return name, nil
}
