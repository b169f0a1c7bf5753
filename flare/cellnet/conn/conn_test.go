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

// peer plays NVFlare's server end: READY to a HELLO, a PING, then it
// echoes DATA frames. ready replaces the READY frame when set.
type peer struct {
	streamer.UnimplementedStreamerServer
	ready *sfm.Frame
	pongs chan uint16
}

func (p *peer) Stream(st grpc.BidiStreamingServer[streamer.Frame, streamer.Frame]) error {
	send := func(f *sfm.Frame) error {
		b, err := f.Encode()
		if err != nil {
			return err
		}
		return st.Send(&streamer.Frame{Data: b})
	}
	for {
		m, err := st.Recv()
		if err != nil {
			return nil
		}
		f, err := sfm.Decode(m.Data)
		if err != nil {
			return err
		}
		switch f.Type {
		case sfm.TypeHello:
			ready := p.ready
			if ready == nil {
				pl, _ := msgpk.Marshal(msgpk.Map{{Key: "endpoint_name", Value: "server"}, {Key: "fqcn", Value: "server"}})
				ready = &sfm.Frame{Type: sfm.TypeReady, StreamID: 1, Seq: 1, Payload: pl}
			}
			send(ready)
			send(&sfm.Frame{Type: sfm.TypePing, StreamID: 7})
		case sfm.TypePong:
			p.pongs <- f.StreamID
		default:
			send(f)
		}
	}
}

func serve(t *testing.T, p *peer) string {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	streamer.RegisterStreamerServer(gs, p)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	return lis.Addr().String()
}

var insecureOpt = grpc.WithTransportCredentials(insecure.NewCredentials())

func TestHandshakePingAndData(t *testing.T) {
	p := &peer{pongs: make(chan uint16, 1)}
	c, err := Dial(context.Background(), serve(t, p), "site-1", insecureOpt)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Peer != "server" {
		t.Fatalf("peer %q", c.Peer)
	}
	out := &sfm.Frame{Type: sfm.TypeData, AppID: sfm.AppCell, StreamID: 17,
		Headers: msgpk.Map{{Key: "cn__channel", Value: "task"}, {Key: "cn__topic", Value: "challenge"}}}
	if err := c.Send(out); err != nil {
		t.Fatal(err)
	}
	in, err := c.Recv() // the PING before is answered, not returned
	if err != nil {
		t.Fatal(err)
	}
	if in.Type != sfm.TypeData || in.Headers.String("cn__topic") != "challenge" || in.Seq != 2 {
		t.Fatalf("echo %+v", in)
	}
	select {
	case sid := <-p.pongs:
		if sid != 7 {
			t.Fatalf("PONG on stream %d", sid)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no PONG")
	}
}

func TestBadHandshakeRefused(t *testing.T) {
	for name, ready := range map[string]*sfm.Frame{
		"DATA first":     {Type: sfm.TypeData, AppID: sfm.AppCell, Headers: msgpk.Map{{Key: "cn__channel", Value: "x"}}},
		"nameless READY": {Type: sfm.TypeReady, Payload: []byte{0x80}},
	} {
		_, err := Dial(context.Background(), serve(t, &peer{ready: ready, pongs: make(chan uint16, 1)}), "site-1", insecureOpt)
		if err == nil || !strings.Contains(err.Error(), "handshake") {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := Dial(context.Background(), "127.0.0.1:1", "bad\nname", insecureOpt); err == nil {
		t.Error("a bad cell name was accepted")
	}
}
