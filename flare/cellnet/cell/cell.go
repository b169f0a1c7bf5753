// Package cell is CellNet's message layer over one connection (package
// conn): requests and replies between named cells, with the routing
// headers NVFlare puts on every message (cn__origin, cn__destination,
// cn__route, cn__req_id, …), return codes, timeouts, and the
// authentication headers of a registered site (client_name, ssid,
// __token__, __token_signature__).
//
// [Cell.Request] sends a request and waits for the reply with its id;
// [Cell.Handle] answers the peer's requests on a channel and topic. What
// travels as a blob stream (every channel but task, admin and return_only
// in NVFlare 2.4+) is not handled here.
package cell

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/cellnet/conn"
	"github.com/flarego/flarego/flare/cellnet/msgpk"
	"github.com/flarego/flarego/flare/cellnet/sfm"
)

// Header keys.
const (
	HChannel         = "cn__channel"
	HTopic           = "cn__topic"
	HOrigin          = "cn__origin"
	HDestination     = "cn__destination"
	HFrom            = "cn__from"
	HTo              = "cn__to"
	HReqID           = "cn__req_id"
	HMsgType         = "cn__msg_type"
	HReplyExpected   = "cn__reply_expected"
	HRoute           = "cn__route"
	HReturnCode      = "cn__return_code"
	HError           = "cn__error"
	HPayloadEncoding = "cn__payload_encoding"
	HPayloadLen      = "cn__payload_len"
	HSendTime        = "cn__send_time"
	HSecure          = "cn__secure"
	HOptional        = "cn__optional"
)

// Payload encodings.
const (
	EncodingFOBS  = "fobs"
	EncodingBytes = "bytes"
	EncodingNone  = "none"
)

// Return codes.
const (
	RCOK                 = "ok"
	RCTimeout            = "timeout"
	RCInvalidTarget      = "invalid_target"
	RCTargetUnreachable  = "target_unreachable"
	RCCommError          = "comm_error"
	RCMsgTooBig          = "msg_too_big"
	RCInvalidRequest     = "invalid_request"
	RCProcessException   = "process_exception"
	RCAuthentication     = "authentication_error"
	RCServiceUnavailable = "service_unavailable"
	RCUnauthenticated    = "unauthenticated"
)

// A Message is a cell message: headers and a payload.
type Message struct {
	Headers msgpk.Map
	Payload []byte
}

// Header returns a header's value.
func (m *Message) Header(k string) any { v, _ := m.Headers.Get(k); return v }

// String returns a string header, "" when absent.
func (m *Message) String(k string) string { return m.Headers.String(k) }

// Auth are the headers a registered site puts on every message.
type Auth struct {
	ClientName, SSID, Token, TokenSignature string
}

// A Handler answers a request; its reply's return code defaults to ok.
type Handler func(req *Message) *Message

// A Link carries frames: a *conn.Conn, or the server's end of one.
type Link interface {
	Send(*sfm.Frame) error
	Recv() (*sfm.Frame, error)
	Close() error
}

var _ Link = (*conn.Conn)(nil)

// A Cell sends and answers messages as FQCN over one connection.
type Cell struct {
	FQCN string
	conn Link

	mu       sync.Mutex
	auth     *Auth
	pending  map[string]chan *Message
	handlers map[[2]string]Handler
	inline   map[[2]string]func(*Message)
	gate     Gate
	admitted func()
	streamID uint16
	err      error
	done     chan struct{}
}

// OnAdmitted sets f to be called (on the reading goroutine, so it must not
// block) for each message the gate lets in.
func (c *Cell) OnAdmitted(f func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.admitted = f
}

// A Gate decides whether a request from the peer is let in: nil lets it
// in; an error refuses it (the reply says unauthenticated, with the
// error's text; a message that expects no reply is dropped).
type Gate func(m *Message) error

// New starts a cell on c; it reads c until c fails or Close.
func New(c Link, fqcn string) *Cell {
	cl := Prepare(c, fqcn)
	cl.Start()
	return cl
}

// Prepare makes a cell on c that does not read yet: its handlers can be
// set before the first message is taken (Start).
func Prepare(c Link, fqcn string) *Cell {
	return &Cell{FQCN: fqcn, conn: c, pending: map[string]chan *Message{}, handlers: map[[2]string]Handler{},
		inline: map[[2]string]func(*Message){}, streamID: 16,
		done: make(chan struct{})}
}

// Start makes a prepared cell read c until c fails or Close.
func (c *Cell) Start() { go c.read() }

// SetAuth sets the authentication headers of later messages.
func (c *Cell) SetAuth(a *Auth) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.auth = a
}

// Handle answers requests on channel and topic with h.
func (c *Cell) Handle(channel, topic string, h Handler) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.handlers[[2]string{channel, topic}] = h
}

// SetGate checks every request the peer sends from now on (a server's
// token check); the task channel's challenge and register pass it.
func (c *Cell) SetGate(g Gate) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gate = g
}

// HandleInline has h receive the peer's messages on channel and topic on
// the cell's reading goroutine, in the order they arrive, and answers
// nothing: h must return at once (the blob streamer's chunks go here, so
// that a stream's chunks are not reordered).
func (c *Cell) HandleInline(channel, topic string, h func(*Message)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.inline[[2]string{channel, topic}] = h
}

// Post sends a message that expects no reply (NVFlare's fire_and_forget).
func (c *Cell) Post(dest, channel, topic string, headers msgpk.Map, payload []byte, encoding string, optional bool) error {
	h := append(msgpk.Map{}, headers...)
	h = append(h,
		msgpk.KV{Key: HTopic, Value: topic}, msgpk.KV{Key: HChannel, Value: channel}, msgpk.KV{Key: HDestination, Value: dest},
		msgpk.KV{Key: HReplyExpected, Value: false}, msgpk.KV{Key: HOptional, Value: optional}, msgpk.KV{Key: HSecure, Value: false},
		msgpk.KV{Key: HFrom, Value: c.FQCN}, msgpk.KV{Key: HTo, Value: dest},
		msgpk.KV{Key: HOrigin, Value: c.FQCN}, msgpk.KV{Key: HMsgType, Value: "req"},
		msgpk.KV{Key: HRoute, Value: []any{[]any{c.FQCN, now()}}})
	h = c.withAuth(h)
	h = append(h, msgpk.KV{Key: HPayloadEncoding, Value: encoding}, msgpk.KV{Key: HPayloadLen, Value: int64(len(payload))},
		msgpk.KV{Key: HSendTime, Value: now()})
	c.mu.Lock()
	err := c.err
	c.mu.Unlock()
	if err != nil {
		return err
	}
	return c.send(h, payload)
}

// Done is closed when the cell stops reading; Err then says why.
func (c *Cell) Done() <-chan struct{} { return c.done }

// Err is why the cell stopped reading.
func (c *Cell) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close closes the connection.
func (c *Cell) Close() error { return c.conn.Close() }

func now() float64 { return float64(time.Now().UnixNano()) / 1e9 }

// ErrReply wraps a reply whose return code is not ok.
var ErrReply = errors.New("cellnet reply not ok")

// Request sends a request to dest and waits for its reply (ctx bounds the
// wait). headers are the application's own, sent first; encoding names
// the payload's (EncodingFOBS, EncodingNone, …).
func (c *Cell) Request(ctx context.Context, dest, channel, topic string, headers msgpk.Map, payload []byte, encoding string) (*Message, error) {
	id := flare.NewUUID()
	h := append(msgpk.Map{}, headers...)
	h = append(h,
		msgpk.KV{Key: HTopic, Value: topic}, msgpk.KV{Key: HChannel, Value: channel}, msgpk.KV{Key: HDestination, Value: dest},
		msgpk.KV{Key: HReqID, Value: id}, msgpk.KV{Key: HReplyExpected, Value: true}, msgpk.KV{Key: HSecure, Value: false},
		msgpk.KV{Key: HOptional, Value: false}, msgpk.KV{Key: HFrom, Value: c.FQCN}, msgpk.KV{Key: HTo, Value: dest},
		msgpk.KV{Key: HOrigin, Value: c.FQCN}, msgpk.KV{Key: HMsgType, Value: "req"},
		msgpk.KV{Key: HRoute, Value: []any{[]any{c.FQCN, now()}}})
	h = c.withAuth(h)
	h = append(h, msgpk.KV{Key: HPayloadEncoding, Value: encoding}, msgpk.KV{Key: HPayloadLen, Value: int64(len(payload))},
		msgpk.KV{Key: HSendTime, Value: now()})
	ch := make(chan *Message, 1)
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return nil, err
	}
	c.pending[id] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
	}()
	if err := c.send(h, payload); err != nil {
		return nil, err
	}
	select {
	case r := <-ch:
		if rc := r.String(HReturnCode); rc != RCOK {
			return r, fmt.Errorf("%w: %s %s/%s: %s %s", ErrReply, dest, channel, topic, flare.LogSafe(rc), flare.LogSafe(r.String(HError)))
		}
		return r, nil
	case <-c.done:
		return nil, fmt.Errorf("cellnet %s/%s to %s: connection ended: %w", channel, topic, dest, c.Err())
	case <-ctx.Done():
		return nil, fmt.Errorf("cellnet %s/%s to %s: no reply: %w", channel, topic, dest, ctx.Err())
	}
}

func (c *Cell) withAuth(h msgpk.Map) msgpk.Map {
	c.mu.Lock()
	a := c.auth
	c.mu.Unlock()
	if a == nil {
		return h
	}
	return append(h, msgpk.KV{Key: "client_name", Value: a.ClientName}, msgpk.KV{Key: "ssid", Value: a.SSID},
		msgpk.KV{Key: "__token__", Value: a.Token}, msgpk.KV{Key: "__token_signature__", Value: a.TokenSignature})
}

func (c *Cell) send(h msgpk.Map, payload []byte) error {
	c.mu.Lock()
	c.streamID++
	sid := c.streamID
	c.mu.Unlock()
	return c.conn.Send(&sfm.Frame{Type: sfm.TypeData, AppID: sfm.AppCell, StreamID: sid, Headers: h, Payload: payload})
}

func (c *Cell) read() {
	defer close(c.done)
	for {
		f, err := c.conn.Recv()
		if err != nil {
			c.mu.Lock()
			c.err = err
			c.mu.Unlock()
			return
		}
		if f.Type != sfm.TypeData || f.AppID != sfm.AppCell {
			continue
		}
		m := &Message{Headers: f.Headers, Payload: f.Payload}
		switch m.String(HMsgType) {
		case "reply":
			c.mu.Lock()
			ch := c.pending[m.String(HReqID)]
			c.mu.Unlock()
			if ch != nil {
				ch <- m
			}
		case "req":
			c.mu.Lock()
			in := c.inline[[2]string{m.String(HChannel), m.String(HTopic)}]
			gate, admitted := c.gate, c.admitted
			c.mu.Unlock()
			if gate != nil && !openTopic(m) {
				if err := gate(m); err != nil {
					if v, _ := m.Headers.Get(HReplyExpected); v == true {
						go c.refuse(m, err)
					}
					continue
				}
				if admitted != nil {
					admitted()
				}
			}
			if in != nil {
				in(m)
				continue
			}
			go c.answer(m)
		}
	}
}

// openTopic says whether a request may come before registration.
func openTopic(m *Message) bool {
	if m.String(HChannel) != "task" {
		return false
	}
	t := m.String(HTopic)
	return t == "challenge" || t == "register"
}

func (c *Cell) refuse(req *Message, err error) {
	c.reply(req, &Message{Headers: msgpk.Map{{Key: HReturnCode, Value: RCUnauthenticated}, {Key: HError, Value: flare.LogCut(err.Error())}}})
}

func (c *Cell) answer(req *Message) {
	c.mu.Lock()
	h := c.handlers[[2]string{req.String(HChannel), req.String(HTopic)}]
	c.mu.Unlock()
	var reply *Message
	if h == nil {
		reply = &Message{Headers: msgpk.Map{{Key: HReturnCode, Value: RCInvalidRequest},
			{Key: HError, Value: fmt.Sprintf("no handler for %s/%s", flare.LogCut(req.String(HChannel)), flare.LogCut(req.String(HTopic)))}}}
	} else if reply = h(req); reply == nil {
		reply = &Message{}
	}
	if v, _ := req.Headers.Get(HReplyExpected); v != true {
		return
	}
	c.reply(req, reply)
}

// reply sends reply to req's origin.
func (c *Cell) reply(req, reply *Message) {
	hd := append(msgpk.Map{}, reply.Headers...)
	if _, ok := hd.Get(HReturnCode); !ok {
		hd = append(hd, msgpk.KV{Key: HReturnCode, Value: RCOK})
	}
	origin := req.String(HOrigin)
	// The reply comes from the cell the request was for (a job's cell
	// answers bye sent to "server"): NVFlare matches replies so.
	me := req.String(HDestination)
	if me == "" {
		me = c.FQCN
	}
	hd = append(hd, msgpk.KV{Key: HSecure, Value: false}, msgpk.KV{Key: HOptional, Value: false},
		msgpk.KV{Key: HChannel, Value: req.String(HChannel)}, msgpk.KV{Key: HTopic, Value: req.String(HTopic)},
		msgpk.KV{Key: HFrom, Value: me}, msgpk.KV{Key: HTo, Value: origin}, msgpk.KV{Key: HOrigin, Value: me},
		msgpk.KV{Key: HDestination, Value: origin}, msgpk.KV{Key: HReqID, Value: req.String(HReqID)},
		msgpk.KV{Key: HMsgType, Value: "reply"}, msgpk.KV{Key: HRoute, Value: []any{[]any{me, now()}}})
	hd = c.withAuth(hd)
	enc := EncodingNone
	if len(reply.Payload) > 0 {
		enc = EncodingFOBS
		if e, ok := reply.Headers.Get(HPayloadEncoding); ok {
			enc, _ = e.(string)
		}
	}
	if _, ok := hd.Get(HPayloadEncoding); !ok {
		hd = append(hd, msgpk.KV{Key: HPayloadEncoding, Value: enc})
	}
	hd = append(hd, msgpk.KV{Key: HPayloadLen, Value: int64(len(reply.Payload))}, msgpk.KV{Key: HSendTime, Value: now()})
	c.send(hd, reply.Payload)
}
