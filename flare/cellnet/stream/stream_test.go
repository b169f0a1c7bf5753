package stream

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/flarego/flarego/flare/cellnet/cell"
	"github.com/flarego/flarego/flare/cellnet/msgpk"
	"github.com/flarego/flarego/flare/cellnet/sfm"
	"github.com/flarego/flarego/flare/internal/flaretest"
)

func pair(t *testing.T, lim Limits) (site, server *Streamer, siteCell, serverCell *cell.Cell) {
	t.Helper()
	a, b := cell.Pipe()
	siteCell, serverCell = cell.New(a, "site-1.job"), cell.New(b, "server.job")
	site, server = New(siteCell, lim), New(serverCell, lim)
	t.Cleanup(func() { site.Close(); server.Close(); siteCell.Close() })
	return
}

func TestRequestReplyAcrossChunks(t *testing.T) {
	site, server, _, _ := pair(t, Limits{})
	// 40 MiB: 40 chunks, more than a window, so the sender waits for ACKs.
	big := bytes.Repeat([]byte("0123456789abcdef"), 40<<16)
	server.Handle("server_command", "submit_update", func(req *cell.Message) *cell.Message {
		if !bytes.Equal(req.Payload, big) || req.String(cell.HChannel) != "server_command" || req.String(HEncoding) != cell.EncodingFOBS {
			t.Errorf("request: %d bytes, headers %v", len(req.Payload), req.Headers[:4])
		}
		return &cell.Message{Headers: msgpk.Map{{Key: "x", Value: "y"}}, Payload: []byte("thanks")}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r, err := site.Request(ctx, "server.job", "server_command", "submit_update", msgpk.Map{{Key: "project_name", Value: "p"}}, big, cell.EncodingFOBS)
	if err != nil {
		t.Fatal(err)
	}
	if string(r.Payload) != "thanks" || r.String("x") != "y" || r.String(cell.HReturnCode) != cell.RCOK ||
		r.String(HChannel) != ReturnOnly || r.String(HTopic) != "server_command:submit_update" || r.String(HEncoding) != cell.EncodingFOBS {
		t.Fatalf("reply %v %q", r.Headers, r.Payload)
	}
	// An empty payload is one FINAL chunk of no bytes.
	server.Handle("aux_communication", "__task_check__", func(req *cell.Message) *cell.Message {
		return &cell.Message{Headers: msgpk.Map{{Key: cell.HReturnCode, Value: "ok"}}}
	})
	if r, err := site.Request(ctx, "server.job", "aux_communication", "__task_check__", nil, nil, cell.EncodingNone); err != nil || len(r.Payload) != 0 {
		t.Fatalf("empty: %v %v", r, err)
	}
	// Unknown topics and error return codes come back as errors with the reason.
	_, err = site.Request(ctx, "server.job", "aux_communication", "nothing", nil, []byte("x"), cell.EncodingFOBS)
	if !errors.Is(err, cell.ErrReply) || !strings.Contains(err.Error(), "no handler for aux_communication/nothing") {
		t.Fatalf("unknown topic: %v", err)
	}
	// A Post gets no reply, and its handler runs.
	got := make(chan string, 1)
	server.Handle("aux_communication", "__job_heartbeat__", func(req *cell.Message) *cell.Message {
		got <- string(req.Payload)
		return nil
	})
	if err := site.Post(ctx, "server.job", "aux_communication", "__job_heartbeat__", nil, []byte("hb"), cell.EncodingFOBS); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-got:
		if p != "hb" {
			t.Fatalf("post payload %q", p)
		}
	case <-ctx.Done():
		t.Fatal("the post did not arrive")
	}
}

// A stream larger than MaxBlob is refused on its first chunk: the sender
// is told why, and nothing of it is kept.
func TestLimits(t *testing.T) {
	site, server, _, _ := pair(t, Limits{MaxBlob: 3 << 20, MaxStreams: 2, IdleTimeout: 200 * time.Millisecond})
	server.Handle("c", "t", func(req *cell.Message) *cell.Message { return &cell.Message{Payload: []byte("ok")} })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := site.Request(ctx, "server.job", "c", "t", nil, make([]byte, 3<<20), cell.EncodingBytes); err != nil {
		t.Fatalf("at the limit: %v", err)
	}
	// Over it: the receiver refuses at once; the request then waits for a
	// reply that never comes, bounded by its context.
	short, cancel2 := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel2()
	if _, err := site.Request(short, "server.job", "c", "t", nil, make([]byte, 3<<20+1), cell.EncodingBytes); err == nil {
		t.Fatal("an oversized stream was answered")
	}
	server.mu.Lock()
	n := len(server.rx)
	server.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d streams kept", n)
	}
}

// Hand-made chunks: a size lie, a gap and a stream that stops all end the
// stream with a reason sent back; none is delivered.
func TestHostileChunks(t *testing.T) {
	a, b := cell.Pipe()
	peer, me := cell.New(a, "server.job"), cell.New(b, "site-1.job")
	defer peer.Close()
	s := New(me, Limits{MaxBlob: 1 << 20, MaxStreams: 4, IdleTimeout: 100 * time.Millisecond})
	defer s.Close()
	delivered := make(chan struct{}, 4)
	s.Handle("c", "t", func(*cell.Message) *cell.Message { delivered <- struct{}{}; return nil })
	errs := make(chan string, 8)
	peer.HandleInline(Channel, TopicAck, func(m *cell.Message) {
		if e := m.String(HError); e != "" {
			errs <- e
		}
	})
	chunk := func(sid, seq, size int64, dt int, payload []byte) {
		peer.Post("site-1.job", Channel, TopicData, msgpk.Map{{Key: HChannel, Value: "c"}, {Key: HTopic, Value: "t"},
			{Key: HStreamID, Value: sid}, {Key: HSequence, Value: seq}, {Key: HSize, Value: size}, {Key: HDataType, Value: int64(dt)},
			{Key: HEncoding, Value: "bytes"}}, payload, cell.EncodingBytes, true)
	}
	want := func(what string) {
		t.Helper()
		select {
		case e := <-errs:
			if !strings.Contains(e, what) {
				t.Fatalf("refusal %q, want %q", e, what)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no refusal (%s)", what)
		}
	}
	chunk(1, 0, 1<<40, DataFinal, []byte("x"))
	want("declares 1099511627776 bytes")
	chunk(2, 0, 4, DataChunk, []byte("abc"))
	chunk(2, 1, 4, DataFinal, []byte("de"))
	want("more than the 4 bytes declared")
	chunk(3, 0, 100, DataChunk, []byte("abc"))
	for seq := int64(2); seq <= 2+MaxOutOfOrder; seq++ {
		chunk(3, seq, 100, DataChunk, []byte("a"))
	}
	want("more than 16 chunks came before chunk 1")
	chunk(6, 0, 10, DataChunk, []byte("abc"))
	chunk(6, 2, 10, DataFinal, []byte("abc")) // chunk 1 never comes
	want("no chunk for")
	chunk(4, 0, 10, DataFinal, []byte("abc"))
	want("ended at 3 bytes of the 10 declared")
	chunk(5, 0, 10, DataChunk, []byte("abc"))
	want("no chunk for")
	select {
	case <-delivered:
		t.Fatal("a bad stream was delivered")
	case <-time.After(50 * time.Millisecond):
	}
}

// Chunks that come out of order (NVFlare's server forwards its job cell's
// frames through a thread pool) are put back in order.
func TestReorderedChunks(t *testing.T) {
	a, b := cell.Pipe()
	peer, me := cell.New(a, "server.job"), cell.New(b, "site-1.job")
	defer peer.Close()
	s := New(me, Limits{})
	defer s.Close()
	got := make(chan []byte, 1)
	s.Handle("c", "t", func(m *cell.Message) *cell.Message { got <- m.Payload; return nil })
	parts := []string{"zero-", "one-", "two-", "three"}
	for _, seq := range []int{2, 0, 3, 1} {
		dt := DataChunk
		if seq == 3 {
			dt = DataFinal
		}
		peer.Post("site-1.job", Channel, TopicData, msgpk.Map{{Key: HChannel, Value: "c"}, {Key: HTopic, Value: "t"},
			{Key: HStreamID, Value: int64(7)}, {Key: HSequence, Value: int64(seq)}, {Key: HSize, Value: int64(18)}, {Key: HDataType, Value: int64(dt)}},
			[]byte(parts[seq]), cell.EncodingBytes, true)
	}
	select {
	case p := <-got:
		if string(p) != "zero-one-two-three" {
			t.Fatalf("reassembled %q", p)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the reordered stream was not delivered")
	}
}

// The captured NVFlare 2.8.1 and main streams, fed to a site's streamer:
// every reply stream the server sent reaches the request waiting for it,
// whole, and every request stream reaches its handler.
func TestCapturedStreams(t *testing.T) {
	for _, name := range []string{"nvflare-2.8.1", "nvflare-main"} {
		t.Run(name, func(t *testing.T) {
			frames := flaretest.CellnetFrames(t, name)
			a, b := cell.Pipe()
			peer, me := cell.New(a, "server"), cell.New(b, "site")
			defer peer.Close()
			s := New(me, Limits{})
			defer s.Close()
			var replies, requests int
			got := make(chan *cell.Message, 64)
			waiting := map[string]bool{}
			for _, cf := range frames {
				f, err := sfm.Decode(cf.Data)
				if err != nil {
					t.Fatal(err)
				}
				if f.Type != sfm.TypeData || f.Headers.String(cell.HChannel) != Channel || f.Headers.String(cell.HTopic) != TopicData {
					continue
				}
				dtv, _ := f.Headers.Get(HDataType)
				dt, _ := asInt(dtv)
				if f.Headers.String(HChannel) == ReturnOnly {
					rid := f.Headers.String(HRequestID)
					if !waiting[rid] {
						waiting[rid] = true
						s.mu.Lock()
						s.pending[rid] = got
						s.mu.Unlock()
					}
					replies++
				} else {
					requests++
					s.Handle(f.Headers.String(HChannel), f.Headers.String(HTopic), func(req *cell.Message) *cell.Message {
						got <- req
						return nil
					})
				}
				if err := peer.Post("site", Channel, TopicData, withoutCell(f.Headers), f.Payload, cell.EncodingBytes, true); err != nil {
					t.Fatal(err)
				}
				if dt != DataFinal {
					continue
				}
				select {
				case m := <-got:
					if sz, _ := asInt(m.Header(HSize)); int(sz) != len(m.Payload) {
						t.Fatalf("%s: %d bytes, declared %d", m.String(HTopic), len(m.Payload), sz)
					}
				case <-time.After(5 * time.Second):
					t.Fatalf("stream %s/%s not delivered", f.Headers.String(HChannel), f.Headers.String(HTopic))
				}
			}
			if replies == 0 || requests == 0 {
				t.Fatalf("%d replies, %d requests in the capture", replies, requests)
			}
		})
	}
}

// withoutCell keeps a captured frame's application and stream headers
// (Post sets the cell's own again).
func withoutCell(h msgpk.Map) msgpk.Map {
	var out msgpk.Map
	for _, kv := range h {
		if k, _ := kv.Key.(string); strings.HasPrefix(k, "sm__") {
			out = append(out, kv)
		}
	}
	return out
}
