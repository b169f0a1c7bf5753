// Package stream is CellNet's blob streaming (NVFlare 2.4+,
// nvflare.fuel.f3.streaming): how every message on a channel other than
// task, admin and return_only travels. A message's payload goes as chunks
// on channel sm__STREAM, topic sm__DATA, each a cell message carrying the
// stream headers (sm__id, sm__sq, sm__os, sm__sz, sm__dt CHUNK or FINAL,
// and the real channel and topic in sm__ch and sm__tp); the receiver ACKs
// on sm__ACK every few MiB it has read (and, for NVFlare main's senders,
// once at the end), and the sender keeps at most a window unacknowledged.
//
// A request carries a request id (sm__ri); its reply is a new stream back,
// on channel return_only with topic "<channel>:<topic>" and the same
// sm__ri. [Streamer.Request] sends one and waits for its reply;
// [Streamer.Handle] answers the peer's; [Streamer.Post] sends one that
// expects none.
//
// A stream declares its size in its first chunk: one larger than
// Limits.MaxBlob is refused before anything is kept, the chunks must add up
// to no more than it declares, at most Limits.MaxStreams are assembled at
// once, and one that stops arriving is dropped after Limits.IdleTimeout.
package stream

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/cellnet/cell"
	"github.com/flarego/flarego/flare/cellnet/msgpk"
)

// Channel and topics of the streamer's own messages.
const (
	Channel   = "sm__STREAM"
	TopicData = "sm__DATA"
	TopicAck  = "sm__ACK"

	// ReturnOnly is the channel of replies.
	ReturnOnly = "return_only"
)

// Stream header keys.
const (
	HStreamID   = "sm__id"
	HDataType   = "sm__dt"
	HSize       = "sm__sz"
	HSequence   = "sm__sq"
	HOffset     = "sm__os"
	HError      = "sm__em"
	HChannel    = "sm__ch"
	HTopic      = "sm__tp"
	HRequestID  = "sm__ri"
	HEncoding   = "sm__pe"
	HOptional   = "sm__op"
	HReliable   = "sm__rs"
	HChunkSize  = "sm__cs"
	HWindowSize = "sm__ws"
	HAckEvery   = "sm__ai"
)

// Data types (sm__dt).
const (
	DataChunk = 1
	DataFinal = 2
	DataAck   = 3
	DataError = 6
)

// NVFlare's defaults, which this side uses too.
const (
	ChunkSize  = 1 << 20
	WindowSize = 16 * ChunkSize
	AckEvery   = 4 * ChunkSize
)

// Limits bound what a peer can make the streamer hold.
type Limits struct {
	// MaxBlob is the largest stream accepted (its declared sm__sz).
	MaxBlob int64
	// MaxStreams is how many streams may be being assembled at once.
	MaxStreams int
	// IdleTimeout drops a stream whose next chunk does not come in time,
	// and fails a send whose window is not acknowledged in time.
	IdleTimeout time.Duration
}

// DefaultLimits: a 2 GiB blob (NVFlare's gRPC message limit), 64 streams
// at once, 5 minutes (NVFlare's read timeout).
var DefaultLimits = Limits{MaxBlob: 2 << 30, MaxStreams: 64, IdleTimeout: 5 * time.Minute}

// ErrStream wraps errors of a stream the peer sent or ended.
var ErrStream = errors.New("cellnet stream")

// A Handler answers a streamed request: req.Payload is the whole payload,
// req.Headers the first chunk's headers with cn__channel and cn__topic set
// to the real channel and topic. The reply's cn__return_code defaults to
// ok; its payload encoding (sm__pe) to fobs when it has a payload.
type Handler func(req *cell.Message) *cell.Message

// A Streamer sends and receives blobs over one cell.
type Streamer struct {
	c   *cell.Cell
	lim Limits

	mu       sync.Mutex
	rx       map[rxKey]*rxStream
	pending  map[string]chan *cell.Message
	handlers map[[2]string]handler
	tx       map[int64]*txStream
	nextID   atomic.Int64
	done     chan struct{}
}

type rxKey struct {
	origin string
	id     int64
}

type rxStream struct {
	headers  msgpk.Map
	buf      []byte
	size     int64
	seq      int64
	acked    int64
	ackEvery int64
	finalAck bool
	last     time.Time
	// early holds chunks that came before the one expected.
	early      map[int64]early
	earlyBytes int64
}

type txStream struct {
	mu    sync.Mutex
	acked int64
	err   string
	wake  chan struct{}
}

// New starts a streamer on c; a zero lim means DefaultLimits.
func New(c *cell.Cell, lim Limits) *Streamer {
	if lim == (Limits{}) {
		lim = DefaultLimits
	}
	if lim.MaxBlob <= 0 {
		lim.MaxBlob = DefaultLimits.MaxBlob
	}
	if lim.MaxStreams <= 0 {
		lim.MaxStreams = DefaultLimits.MaxStreams
	}
	if lim.IdleTimeout <= 0 {
		lim.IdleTimeout = DefaultLimits.IdleTimeout
	}
	s := &Streamer{c: c, lim: lim, rx: map[rxKey]*rxStream{}, pending: map[string]chan *cell.Message{},
		handlers: map[[2]string]handler{}, tx: map[int64]*txStream{}, done: make(chan struct{})}
	// Stream ids: microseconds at start, then one more per stream, as
	// NVFlare numbers them.
	s.nextID.Store(time.Now().UnixMicro())
	c.HandleInline(Channel, TopicData, s.chunk)
	c.HandleInline(Channel, TopicAck, s.ack)
	go s.sweep()
	return s
}

// handler is a Handler and the slots it takes (nil: no limit).
type handler struct {
	h     Handler
	slots chan struct{}
	own   chan struct{} // this streamer's share of slots: a peer takes no more than perPeerSlots
}

// perPeerSlots bounds the shared slots one streamer (one peer) holds at
// once: a peer that asks and then stops reading stalls only itself.
const perPeerSlots = 2

// Handle answers streamed requests on channel and topic with h.
func (s *Streamer) Handle(channel, topic string, h Handler) { s.HandleLimited(channel, topic, nil, h) }

// HandleLimited is Handle with a bound on the requests answered at once:
// each takes a slot of slots (a buffered channel, which may be shared by
// many streamers) from before h runs until its reply has been sent, so
// that large replies (array downloads to hundreds of sites) are not all
// built and buffered at the same time. The others wait their turn; one
// streamer's requests take at most two slots at once, so a peer that
// stops reading holds up only its own.
func (s *Streamer) HandleLimited(channel, topic string, slots chan struct{}, h Handler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	hd := handler{h: h, slots: slots}
	if slots != nil {
		hd.own = make(chan struct{}, perPeerSlots)
	}
	s.handlers[[2]string{channel, topic}] = hd
}

// Request streams payload (encoded as encoding, e.g. cell.EncodingFOBS) to
// dest on channel and topic and waits for the reply stream. headers go
// with every chunk. A reply whose return code is not ok is returned with
// an error wrapping cell.ErrReply.
func (s *Streamer) Request(ctx context.Context, dest, channel, topic string, headers msgpk.Map, payload []byte, encoding string) (*cell.Message, error) {
	id := flare.NewUUID()
	ch := make(chan *cell.Message, 1)
	s.mu.Lock()
	s.pending[id] = ch
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.pending, id)
		s.mu.Unlock()
	}()
	h := append(msgpk.Map{}, headers...)
	h = append(h, msgpk.KV{Key: HRequestID, Value: id})
	if err := s.send(ctx, dest, channel, topic, h, payload, encoding, true); err != nil {
		return nil, fmt.Errorf("%s/%s to %s: %w", channel, topic, dest, err)
	}
	select {
	case r := <-ch:
		if rc := r.String(cell.HReturnCode); rc != "" && rc != cell.RCOK {
			return r, fmt.Errorf("%w: %s %s/%s: %s %s", cell.ErrReply, dest, channel, topic, flare.LogSafe(rc), flare.LogSafe(r.String(cell.HError)))
		}
		return r, nil
	case <-s.c.Done():
		return nil, fmt.Errorf("%s/%s to %s: connection ended: %w", channel, topic, dest, s.c.Err())
	case <-ctx.Done():
		return nil, fmt.Errorf("%s/%s to %s: no reply: %w", channel, topic, dest, ctx.Err())
	}
}

// Post streams a message that expects no reply.
func (s *Streamer) Post(ctx context.Context, dest, channel, topic string, headers msgpk.Map, payload []byte, encoding string) error {
	if err := s.send(ctx, dest, channel, topic, headers, payload, encoding, true); err != nil {
		return fmt.Errorf("%s/%s to %s: %w", channel, topic, dest, err)
	}
	return nil
}

// Close stops the streamer's sweeper (the cell is the caller's).
func (s *Streamer) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.done:
	default:
		close(s.done)
	}
}

// send writes payload as chunks, waiting for ACKs when more than a window
// is outstanding.
func (s *Streamer) send(ctx context.Context, dest, channel, topic string, headers msgpk.Map, payload []byte, encoding string, optional bool) error {
	sid := s.nextID.Add(1)
	t := &txStream{wake: make(chan struct{}, 1)}
	s.mu.Lock()
	s.tx[sid] = t
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.tx, sid)
		s.mu.Unlock()
	}()
	size := int64(len(payload))
	var off int64
	for seq := int64(0); ; seq++ {
		n := min(int64(ChunkSize), size-off)
		final := off+n >= size
		// Flow control: no more than a window ahead of the peer's ACKs.
		for !final {
			t.mu.Lock()
			acked, perr := t.acked, t.err
			t.mu.Unlock()
			if perr != "" {
				return fmt.Errorf("%w: the receiver ended it: %s", ErrStream, flare.LogSafe(perr))
			}
			if off-acked <= WindowSize {
				break
			}
			timer := time.NewTimer(s.lim.IdleTimeout)
			select {
			case <-t.wake:
				timer.Stop()
			case <-timer.C:
				return fmt.Errorf("%w: no ACK within %s (%d of %d bytes sent)", ErrStream, s.lim.IdleTimeout, off, size)
			case <-ctx.Done():
				timer.Stop()
				return ctx.Err()
			case <-s.c.Done():
				timer.Stop()
				return fmt.Errorf("connection ended: %w", s.c.Err())
			}
		}
		dt := DataChunk
		if final {
			dt = DataFinal
		}
		h := append(msgpk.Map{}, headers...)
		h = append(h, msgpk.KV{Key: HEncoding, Value: encoding}, msgpk.KV{Key: HChannel, Value: channel},
			msgpk.KV{Key: HTopic, Value: topic}, msgpk.KV{Key: HSize, Value: size}, msgpk.KV{Key: HStreamID, Value: sid},
			msgpk.KV{Key: HDataType, Value: int64(dt)}, msgpk.KV{Key: HSequence, Value: seq},
			msgpk.KV{Key: HOffset, Value: off}, msgpk.KV{Key: HOptional, Value: optional})
		if err := s.c.Post(dest, Channel, TopicData, h, payload[off:off+n], cell.EncodingBytes, optional); err != nil {
			return err
		}
		off += n
		if final {
			return nil
		}
	}
}

// ack takes the peer's ACK (or error) for a stream this side sends.
func (s *Streamer) ack(m *cell.Message) {
	sid, _ := asInt(m.Header(HStreamID))
	s.mu.Lock()
	t := s.tx[sid]
	s.mu.Unlock()
	if t == nil {
		return // late ACKs are normal: the stream is done
	}
	t.mu.Lock()
	if e := m.String(HError); e != "" {
		t.err = e
	} else if off, ok := asInt(m.Header(HOffset)); ok && off > t.acked {
		t.acked = off
	}
	t.mu.Unlock()
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

// MaxOutOfOrder is how many chunks of a stream may arrive ahead of the
// one expected (NVFlare's server forwards its job cell's chunks through a
// thread pool, which can reorder them; NVFlare's receivers take 16).
const MaxOutOfOrder = 16

type early struct {
	payload []byte
	final   bool
}

// chunk takes one chunk of a stream the peer sends; it runs on the cell's
// reading goroutine.
func (s *Streamer) chunk(m *cell.Message) {
	origin := m.String(cell.HOrigin)
	sid, okID := asInt(m.Header(HStreamID))
	seq, okSeq := asInt(m.Header(HSequence))
	dt, _ := asInt(m.Header(HDataType))
	key := rxKey{origin, sid}
	if dt == DataError {
		s.mu.Lock()
		delete(s.rx, key)
		s.mu.Unlock()
		return
	}
	if !okID || !okSeq || seq < 0 {
		return
	}
	s.mu.Lock()
	r := s.rx[key]
	if r == nil {
		// Every chunk carries the stream's size, channel and topic: the
		// stream starts with whichever chunk comes first.
		size, ok := asInt(m.Header(HSize))
		var why string
		switch {
		case !ok || size < 0:
			why = "no size (sm__sz)"
		case size > s.lim.MaxBlob:
			why = fmt.Sprintf("declares %d bytes, more than the %d accepted", size, s.lim.MaxBlob)
		case len(s.rx) >= s.lim.MaxStreams:
			why = fmt.Sprintf("%d streams are being received already", len(s.rx))
		}
		if why != "" {
			s.mu.Unlock()
			s.refuse(origin, sid, why)
			return
		}
		r = &rxStream{headers: m.Headers, size: size, buf: make([]byte, 0, min(size, WindowSize)), ackEvery: AckEvery, last: time.Now()}
		if v, ok := asInt(m.Header(HAckEvery)); ok && v > 0 {
			r.ackEvery = v
		}
		_, cs := m.Headers.Get(HChunkSize)
		_, rs := m.Headers.Get(HReliable)
		r.finalAck = cs || rs
		s.rx[key] = r
	}
	if seq == 0 {
		r.headers = m.Headers // the request's own headers travel with chunk 0
	}
	r.last = time.Now()
	switch {
	case seq < r.seq:
		s.mu.Unlock()
		return // a duplicate
	case seq > r.seq:
		var why string
		if _, dup := r.early[seq]; dup {
			s.mu.Unlock()
			return
		}
		if len(r.early) >= MaxOutOfOrder {
			why = fmt.Sprintf("more than %d chunks came before chunk %d", MaxOutOfOrder, r.seq)
		} else if r.earlyBytes+int64(len(r.buf))+int64(len(m.Payload)) > r.size {
			why = fmt.Sprintf("chunks add up to more than the %d bytes declared", r.size)
		}
		if why != "" {
			s.mu.Unlock()
			s.drop(key, origin, sid, why)
			return
		}
		if r.early == nil {
			r.early = map[int64]early{}
		}
		r.early[seq] = early{m.Payload, dt == DataFinal}
		r.earlyBytes += int64(len(m.Payload))
		s.mu.Unlock()
		return
	}
	// seq is the next one: take it and the early ones that follow it.
	final := dt == DataFinal
	payload := m.Payload
	for {
		if r.earlyBytes+int64(len(r.buf))+int64(len(payload)) > r.size {
			s.mu.Unlock()
			s.drop(key, origin, sid, fmt.Sprintf("chunks add up to more than the %d bytes declared", r.size))
			return
		}
		r.buf = append(r.buf, payload...)
		r.seq++
		if final {
			break
		}
		e, ok := r.early[r.seq]
		if !ok {
			break
		}
		delete(r.early, r.seq)
		r.earlyBytes -= int64(len(e.payload))
		payload, final = e.payload, e.final
	}
	last := r.seq - 1
	got := int64(len(r.buf))
	sendAck := !final && got-r.acked >= r.ackEvery
	if sendAck {
		r.acked = got
	}
	if final {
		delete(s.rx, key)
	}
	s.mu.Unlock()
	if sendAck {
		s.sendAck(origin, sid, got, last)
	}
	if !final {
		return
	}
	if got != r.size || len(r.early) > 0 {
		s.refuse(origin, sid, fmt.Sprintf("ended at %d bytes of the %d declared", got, r.size))
		return
	}
	if r.finalAck {
		s.sendAck(origin, sid, got, last)
	}
	go s.deliver(r.headers, r.buf)
}

func (s *Streamer) sendAck(origin string, sid, off, seq int64) {
	s.c.Post(origin, Channel, TopicAck, msgpk.Map{{Key: HStreamID, Value: sid}, {Key: HDataType, Value: int64(DataAck)},
		{Key: HOffset, Value: off}, {Key: HSequence, Value: seq}}, nil, cell.EncodingNone, true)
}

func (s *Streamer) drop(key rxKey, origin string, sid int64, why string) {
	s.mu.Lock()
	delete(s.rx, key)
	s.mu.Unlock()
	s.refuse(origin, sid, why)
}

// refuse tells the sender why its stream is not taken.
func (s *Streamer) refuse(origin string, sid int64, why string) {
	s.c.Post(origin, Channel, TopicAck, msgpk.Map{{Key: HStreamID, Value: sid}, {Key: HDataType, Value: int64(DataError)},
		{Key: HError, Value: "stream refused: " + why}}, nil, cell.EncodingNone, true)
}

// deliver hands a whole stream to the waiting request or to its handler.
func (s *Streamer) deliver(h msgpk.Map, payload []byte) {
	channel, topic := h.String(HChannel), h.String(HTopic)
	m := &cell.Message{Headers: h, Payload: payload}
	if channel == ReturnOnly {
		s.mu.Lock()
		ch := s.pending[h.String(HRequestID)]
		s.mu.Unlock()
		if ch != nil {
			select {
			case ch <- m:
			default:
			}
		}
		return
	}
	s.mu.Lock()
	hd, ok := s.handlers[[2]string{channel, topic}]
	s.mu.Unlock()
	if ok && hd.slots != nil {
		select {
		case hd.own <- struct{}{}:
		case <-s.c.Done():
			return
		}
		defer func() { <-hd.own }()
		select {
		case hd.slots <- struct{}{}:
		case <-s.c.Done():
			return
		}
		defer func() { <-hd.slots }()
	}
	rid := h.String(HRequestID)
	var reply *cell.Message
	if !ok {
		reply = &cell.Message{Headers: msgpk.Map{{Key: cell.HReturnCode, Value: cell.RCInvalidRequest},
			{Key: cell.HError, Value: fmt.Sprintf("no handler for %s/%s", flare.LogCut(channel), flare.LogCut(topic))}}}
	} else {
		req := &cell.Message{Headers: h.With(cell.HChannel, channel).With(cell.HTopic, topic), Payload: payload}
		if reply = hd.h(req); reply == nil {
			reply = &cell.Message{}
		}
	}
	if rid == "" {
		return // a Post: no reply
	}
	rh := msgpk.Map{}
	enc := cell.EncodingNone
	if len(reply.Payload) > 0 {
		enc = cell.EncodingFOBS
	}
	rc := cell.RCOK
	for _, kv := range reply.Headers {
		k, _ := kv.Key.(string)
		switch k {
		case HEncoding:
			enc, _ = kv.Value.(string)
			continue
		case cell.HReturnCode:
			rc, _ = kv.Value.(string)
			continue
		}
		if strings.HasPrefix(k, "sm__") || (strings.HasPrefix(k, "cn__") && k != cell.HError) {
			continue
		}
		rh = append(rh, kv)
	}
	rh = append(rh, msgpk.KV{Key: cell.HReturnCode, Value: rc}, msgpk.KV{Key: cell.HReqID, Value: ""},
		msgpk.KV{Key: HRequestID, Value: rid})
	ctx, cancel := context.WithTimeout(context.Background(), s.lim.IdleTimeout)
	defer cancel()
	s.send(ctx, h.String(cell.HOrigin), ReturnOnly, channel+":"+topic, rh, reply.Payload, enc, true)
}

// sweep drops streams whose chunks stopped coming.
func (s *Streamer) sweep() {
	tick := time.NewTicker(max(s.lim.IdleTimeout/4, 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
		case <-s.done:
			return
		case <-s.c.Done():
			return
		}
		var gone []rxKey
		s.mu.Lock()
		for k, r := range s.rx {
			if time.Since(r.last) > s.lim.IdleTimeout {
				gone = append(gone, k)
				delete(s.rx, k)
			}
		}
		s.mu.Unlock()
		for _, k := range gone {
			s.refuse(k.origin, k.id, fmt.Sprintf("no chunk for %s", s.lim.IdleTimeout))
		}
	}
}

func asInt(v any) (int64, bool) {
	switch x := v.(type) {
	case int64:
		return x, true
	case uint64:
		if x > 1<<62 {
			return 0, false
		}
		return int64(x), true
	case int:
		return int64(x), true
	}
	return 0, false
}
