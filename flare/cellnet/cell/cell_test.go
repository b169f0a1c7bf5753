package cell

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/flarego/flarego/flare/cellnet/msgpk"
)

func TestRequestReply(t *testing.T) {
	a, b := Pipe()
	site, server := New(a, "site-1"), New(b, "server")
	defer site.Close()
	server.Handle("task", "challenge", func(req *Message) *Message {
		if req.String("cn") != "site-1" || req.String(HOrigin) != "site-1" || req.String(HMsgType) != "req" {
			t.Errorf("request headers %v", req.Headers)
		}
		return &Message{Headers: msgpk.Map{{Key: "x", Value: "y"}}, Payload: []byte("fobs")}
	})
	site.SetAuth(&Auth{ClientName: "site-1", SSID: "NA", Token: "tok", TokenSignature: "sig"})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := site.Request(ctx, "server", "task", "challenge", msgpk.Map{{Key: "cn", Value: "site-1"}}, nil, EncodingNone)
	if err != nil {
		t.Fatal(err)
	}
	if string(r.Payload) != "fobs" || r.String("x") != "y" || r.String(HReturnCode) != RCOK || r.String(HPayloadEncoding) != EncodingFOBS {
		t.Fatalf("reply %v %q", r.Headers, r.Payload)
	}
	// Unknown topics get invalid_request, with the reason.
	_, err = site.Request(ctx, "server", "task", "nothing", nil, nil, EncodingNone)
	if !errors.Is(err, ErrReply) || !strings.Contains(err.Error(), "invalid_request") || !strings.Contains(err.Error(), "no handler") {
		t.Fatalf("unknown topic: %v", err)
	}
	// A request the peer never answers times out; a closed link ends waits.
	server.Handle("task", "slow", func(*Message) *Message { time.Sleep(time.Second); return nil })
	short, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	if _, err := site.Request(short, "server", "task", "slow", nil, nil, EncodingNone); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("slow: %v", err)
	}
	a.Close()
	<-site.Done()
	if _, err := site.Request(ctx, "server", "task", "challenge", nil, nil, EncodingNone); err == nil {
		t.Fatal("a request on a closed link succeeded")
	}
}

// A gate refuses what it does not let in, with its reason; challenge and
// register pass it.
func TestGate(t *testing.T) {
	a, b := Pipe()
	site, server := New(a, "site-1"), New(b, "server")
	defer site.Close()
	server.SetGate(func(m *Message) error {
		if m.String("__token__") != "good" {
			return errors.New("unknown token")
		}
		return nil
	})
	ran := make(chan string, 4)
	for _, topic := range []string{"challenge", "heart_beat"} {
		server.Handle("task", topic, func(m *Message) *Message { ran <- topic; return nil })
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := site.Request(ctx, "server", "task", "challenge", nil, nil, EncodingNone); err != nil {
		t.Fatalf("challenge: %v", err)
	}
	_, err := site.Request(ctx, "server", "task", "heart_beat", nil, nil, EncodingNone)
	if !errors.Is(err, ErrReply) || !strings.Contains(err.Error(), "unauthenticated unknown token") {
		t.Fatalf("heartbeat without a token: %v", err)
	}
	site.SetAuth(&Auth{ClientName: "site-1", Token: "good"})
	if _, err := site.Request(ctx, "server", "task", "heart_beat", nil, nil, EncodingNone); err != nil {
		t.Fatalf("heartbeat with the token: %v", err)
	}
	if r1, r2 := <-ran, <-ran; r1 != "challenge" || r2 != "heart_beat" || len(ran) != 0 {
		t.Fatalf("handlers ran: %s %s (+%d)", r1, r2, len(ran))
	}
}
