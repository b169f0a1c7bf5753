package conn

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/flarego/flarego/flare/cellnet/msgpk"
	"github.com/flarego/flarego/flare/cellnet/sfm"
	"github.com/flarego/flarego/proto/streamer"
)

func listen(t *testing.T, s *Server) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(ServerOptions()...)
	s.Register(g)
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	return lis.Addr().String()
}

// Our Dial against our Server: HELLO and READY name both ends, and DATA
// frames go both ways until either end closes.
func TestServerHandshakeAndFrames(t *testing.T) {
	peers := make(chan string, 2)
	addr := listen(t, &Server{Name: "server", Accept: func(c *Conn) {
		peers <- c.Peer
		for {
			f, err := c.Recv()
			if err != nil {
				return
			}
			f.Headers = append(f.Headers, msgpk.KV{Key: "echo", Value: true})
			if c.Send(f) != nil {
				return
			}
		}
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, addr, "site-1", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Peer != "server" || <-peers != "site-1" {
		t.Fatalf("peer %q", c.Peer)
	}
	if err := c.Send(&sfm.Frame{Type: sfm.TypeData, AppID: sfm.AppCell, StreamID: 17, Payload: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	f, err := c.Recv()
	if err != nil || string(f.Payload) != "x" {
		t.Fatalf("echo %+v %v", f, err)
	}
	if v, _ := f.Headers.Get("echo"); v != true {
		t.Fatalf("echo headers %v", f.Headers)
	}
}

// A call that does not open with a HELLO naming a cell, or one past
// MaxConns, is ended with the reason.
func TestServerRefusals(t *testing.T) {
	hold := make(chan struct{})
	defer close(hold)
	addr := listen(t, &Server{Name: "server", MaxConns: 1, Accept: func(c *Conn) { <-hold }})
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	call := func(first *sfm.Frame) error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		st, err := streamer.NewStreamerClient(cc).Stream(ctx)
		if err != nil {
			return err
		}
		b, _ := first.Encode()
		st.Send(&streamer.Frame{Data: b})
		_, err = st.Recv()
		return err
	}
	hello := func(name string) *sfm.Frame {
		p, _ := msgpk.Marshal(msgpk.Map{{Key: "endpoint_name", Value: name}})
		return &sfm.Frame{Type: sfm.TypeHello, StreamID: 1, Payload: p}
	}
	if err := call(&sfm.Frame{Type: sfm.TypeData, StreamID: 1}); err == nil || !strings.Contains(err.Error(), "not HELLO") {
		t.Fatalf("DATA first: %v", err)
	}
	if err := call(hello("bad\nname")); err == nil || !strings.Contains(err.Error(), "cell name") {
		t.Fatalf("a bad name: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, addr, "site-1", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := call(hello("site-2")); err == nil || !strings.Contains(err.Error(), "too many connections") {
		t.Fatalf("past MaxConns: %v", err)
	}
}
