// Package conn is one CellNet connection over NVFlare's gRPC driver
// (streamer.Streamer/Stream): a long bidirectional call whose every
// message is one SFM frame (package sfm).
//
// [Dial] opens the call and does the handshake (HELLO with this end's
// name, READY from the peer's), then [Conn.Send] and [Conn.Recv] carry
// frames: Send numbers them (the SFM sequence per connection and
// direction, and the driver's Frame.seq), Recv answers the peer's PINGs
// itself and checks every frame before it hands it on. A frame larger than
// sfm.MaxFrameBytes is refused by gRPC before it is read.
package conn

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/cellnet/msgpk"
	"github.com/flarego/flarego/flare/cellnet/sfm"
	"github.com/flarego/flarego/proto/streamer"
)

// HandshakeTimeout bounds the wait for the peer's READY.
const HandshakeTimeout = 10 * time.Second

// frameSeq numbers the driver's Frame messages, per process as NVFlare does.
var frameSeq atomic.Int32

// A Conn is an open CellNet connection.
type Conn struct {
	// Peer is the endpoint name the peer gave in its handshake ("server").
	Peer string

	stream frames
	mu     sync.Mutex // serialises Send
	seq    uint16     // the SFM sequence of the last frame sent
	close  func() error
}

// frames is one end of the Stream call: the client's or the server's.
type frames interface {
	Send(*streamer.Frame) error
	Recv() (*streamer.Frame, error)
}

// DefaultKeepalive is how a dialled connection finds out that the network
// under it went away (no reset crosses a cut): after a minute in which
// nothing arrived it pings, and without an answer in 20 s the connection
// fails, so its cell reconnects. NVFlare's servers and flarego's allow it
// (their heartbeat replies are traffic between the pings).
var DefaultKeepalive = keepalive.ClientParameters{Time: time.Minute, Timeout: 20 * time.Second}

// Dial connects to target (host:port) as the cell named local (an FQCN:
// "site-1", "site-1.<job id>") and does the handshake. The connection
// pings as DefaultKeepalive says unless opts set keepalive.
func Dial(ctx context.Context, target, local string, opts ...grpc.DialOption) (*Conn, error) {
	if err := flare.CheckName("cell name", local); err != nil {
		return nil, err
	}
	opts = append([]grpc.DialOption{grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(sfm.MaxFrameBytes+64),
		grpc.MaxCallSendMsgSize(sfm.MaxFrameBytes+64)), grpc.WithKeepaliveParams(DefaultKeepalive)}, opts...)
	cc, err := grpc.NewClient(target, opts...)
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancel(context.Background())
	st, err := streamer.NewStreamerClient(cc).Stream(sctx)
	if err != nil {
		cancel()
		cc.Close()
		return nil, fmt.Errorf("cellnet %s: %w", target, err)
	}
	c := &Conn{stream: st, close: func() error { cancel(); return cc.Close() }}
	if err := c.handshake(ctx, local); err != nil {
		c.Close()
		return nil, fmt.Errorf("cellnet %s: %w", target, err)
	}
	return c, nil
}

func (c *Conn) handshake(ctx context.Context, local string) error {
	hello, err := msgpk.Marshal(msgpk.Map{{Key: "endpoint_name", Value: local},
		{Key: "timestamp", Value: float64(time.Now().UnixNano()) / 1e9}, {Key: "fqcn", Value: local}})
	if err != nil {
		return err
	}
	if err := c.Send(&sfm.Frame{Type: sfm.TypeHello, StreamID: 1, Payload: hello}); err != nil {
		return err
	}
	type result struct {
		f   *sfm.Frame
		err error
	}
	got := make(chan result, 1)
	go func() { f, err := c.recv(); got <- result{f, err} }()
	ctx, cancel := context.WithTimeout(ctx, HandshakeTimeout)
	defer cancel()
	select {
	case r := <-got:
		if r.err != nil {
			return r.err
		}
		if r.f.Type != sfm.TypeReady {
			return fmt.Errorf("handshake: the peer sent %s, not READY", sfm.TypeName(r.f.Type))
		}
		v, err := msgpk.Unmarshal(r.f.Payload)
		m, _ := v.(msgpk.Map)
		if err != nil || m.String("endpoint_name") == "" {
			return errors.New("handshake: READY does not name the peer")
		}
		c.Peer = m.String("endpoint_name")
		return nil
	case <-ctx.Done():
		return fmt.Errorf("handshake: no READY within %s", HandshakeTimeout)
	}
}

// Send writes f, numbering it.
func (c *Conn) Send(f *sfm.Frame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	f.Seq = c.seq
	b, err := f.Encode()
	if err != nil {
		return err
	}
	return c.stream.Send(&streamer.Frame{Seq: frameSeq.Add(1), Data: b})
}

// Recv returns the next frame other than PING and PONG (a PING is answered).
func (c *Conn) Recv() (*sfm.Frame, error) {
	for {
		f, err := c.recv()
		if err != nil {
			return nil, err
		}
		switch f.Type {
		case sfm.TypePing:
			if err := c.Send(&sfm.Frame{Type: sfm.TypePong, StreamID: f.StreamID}); err != nil {
				return nil, err
			}
		case sfm.TypePong:
		default:
			return f, nil
		}
	}
}

func (c *Conn) recv() (*sfm.Frame, error) {
	m, err := c.stream.Recv()
	if err != nil {
		return nil, err
	}
	return sfm.Decode(m.Data)
}

// Close ends the call and the connection.
func (c *Conn) Close() error { return c.close() }
