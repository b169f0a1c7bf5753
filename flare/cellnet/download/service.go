package download

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/cellnet/fobs"
	"github.com/flarego/flarego/flare/cellnet/lobs"
	"github.com/flarego/flarego/flare/cellnet/msgpk"
)

// Config tunes a Service. A zero field takes its default.
type Config struct {
	// ChunkSize is the bytes of .npz a reply carries: items are added
	// while the total stays under it, and the first always (NVFlare's
	// max_chunk_size, 2 MiB).
	ChunkSize int
	// Timeout lets a batch go when nobody has asked for it for this long
	// (NVFlare's transaction timeout, at least 300 s for arrays).
	Timeout time.Duration
	// Receivers is how many receivers a batch is for: once that many
	// have had all of it, it is let go. 0 means 1, as NVFlare's payloads
	// have unless told; negative means unknown (only Done or Timeout).
	Receivers int
	// OnDone, if set, is called (outside the service's lock) when a batch
	// is let go, with the status NVFlare gives: "finished", "timeout" or
	// "deleted".
	OnDone func(refID, status string)
	// MaxReplies bounds the replies built and under way at once, over
	// every streamer the service is served on (ServeOn): a reply is up to
	// ChunkSize, held with its frames until sent, and hundreds of sites
	// pulling a model at once would otherwise hold hundreds of them.
	// Default 16.
	MaxReplies int
}

// Defaults of Config.
const (
	DefaultChunkSize  = 2 << 20
	DefaultTimeout    = 300 * time.Second
	DefaultMaxReplies = 16
)

// Transaction statuses given to OnDone.
const (
	DoneFinished = "finished"
	DoneTimeout  = "timeout"
	DoneDeleted  = "deleted"
)

// A finished batch is remembered this long, by receiver (NVFlare's
// tombstones), so that a receiver that asks again — its last reply lost —
// still gets eof; at most maxFinished of them.
const (
	finishedTTL = 30 * time.Minute
	maxFinished = 1 << 12
)

// A Service serves batches of arrays to the receivers of the payloads
// that refer to them. It holds the arrays themselves (not copies: they
// must not change while served) and builds each reply when asked, so it
// holds no more than the arrays and the replies under way.
type Service struct {
	replies chan struct{} // slots of the replies under way (Config.MaxReplies)
	fqcn    string
	cfg     Config

	mu       sync.Mutex
	batches  map[string]*batch
	finished map[string]*finished
	order    []string // finished refs, oldest first
	closed   bool
}

type batch struct {
	items []member
	last  time.Time // last activity
	timer *time.Timer
	// receivers that have had all of it (NVFlare: downloaded_to_one)
	receivers map[string]bool
}

type finished struct {
	receivers map[string]bool
	at        time.Time
}

// NewService is a service for the cell fqcn (what payloads tell
// receivers to download from).
func NewService(fqcn string, cfg Config) *Service {
	if cfg.ChunkSize <= 0 {
		cfg.ChunkSize = DefaultChunkSize
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Receivers == 0 {
		cfg.Receivers = 1
	}
	if cfg.MaxReplies <= 0 {
		cfg.MaxReplies = DefaultMaxReplies
	}
	return &Service{fqcn: fqcn, cfg: cfg, batches: map[string]*batch{}, finished: map[string]*finished{},
		replies: make(chan struct{}, cfg.MaxReplies)}
}

// FQCN is the cell the service is for.
func (s *Service) FQCN() string { return s.fqcn }

// Encode is fobs.Encode with v's arrays sent by reference: they are
// added as one batch, served from here.
func (s *Service) Encode(v any) ([]byte, error) {
	return fobs.EncodeWith(v, fobs.EncodeOptions{ArrayRefs: func(items []flare.NamedArray) (string, string, error) {
		ref, err := s.Add(items)
		return s.fqcn, ref, err
	}})
}

// Add serves arrays as one batch, each under its name (the item id a
// payload refers to), and returns the batch's ref id.
func (s *Service) Add(arrays []flare.NamedArray) (string, error) {
	items := make([]member, len(arrays))
	seen := make(map[string]bool, len(arrays))
	for i, a := range arrays {
		switch {
		case a.Array == nil:
			return "", fmt.Errorf("download: array %s is nil", flare.LogSafe(a.Name))
		case a.Name == "" || len(a.Name) > 1<<10:
			return "", fmt.Errorf("download: array name of %d bytes", len(a.Name))
		case a.Name == allowPickle:
			return "", fmt.Errorf("download: array name %s is numpy's own", a.Name)
		case seen[a.Name]:
			return "", fmt.Errorf("download: array %s twice", flare.LogSafe(a.Name))
		}
		seen[a.Name] = true
		m, err := newMember(a.Name, a.Array)
		if err != nil {
			return "", fmt.Errorf("download: array %s: %w", flare.LogSafe(a.Name), err)
		}
		if m.size() > maxMember {
			return "", fmt.Errorf("download: array %s of %d bytes, more than one reply carries", flare.LogSafe(a.Name), m.size())
		}
		items[i] = m
	}
	ref := flare.NewUUID()
	b := &batch{items: items, last: time.Now(), receivers: map[string]bool{}}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return "", errors.New("download: service closed")
	}
	s.batches[ref] = b
	b.timer = time.AfterFunc(s.cfg.Timeout, func() { s.expire(ref, b) })
	return ref, nil
}

// expire lets b go if nobody has asked for it for the timeout.
func (s *Service) expire(ref string, b *batch) {
	s.mu.Lock()
	if s.batches[ref] != b {
		s.mu.Unlock()
		return
	}
	if idle := time.Since(b.last); idle < s.cfg.Timeout {
		b.timer.Reset(s.cfg.Timeout - idle)
		s.mu.Unlock()
		return
	}
	delete(s.batches, ref)
	s.mu.Unlock()
	s.done(ref, DoneTimeout)
}

func (s *Service) done(ref, status string) {
	if s.cfg.OnDone != nil {
		s.cfg.OnDone(ref, status)
	}
}

// Done lets batch ref go now (NVFlare's delete_transaction).
func (s *Service) Done(ref string) {
	s.mu.Lock()
	b := s.batches[ref]
	if b != nil {
		b.timer.Stop()
		delete(s.batches, ref)
	}
	s.mu.Unlock()
	if b != nil {
		s.done(ref, DoneDeleted)
	}
}

// Close lets every batch go; Add fails after it.
func (s *Service) Close() {
	s.mu.Lock()
	s.closed = true
	refs := make([]string, 0, len(s.batches))
	for ref, b := range s.batches {
		b.timer.Stop()
		refs = append(refs, ref)
	}
	clear(s.batches)
	clear(s.finished)
	s.order = nil
	s.mu.Unlock()
	for _, ref := range refs {
		s.done(ref, DoneDeleted)
	}
}

// Len is the number of batches served.
func (s *Service) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.batches)
}

// Return codes of refused requests, CellNet's.
const (
	CodeInvalidRequest   = "invalid_request"
	CodeProcessException = "process_exception"
)

// A RequestError is a request the service does not answer with a
// payload: the reply is to carry Code as its return code, and no payload
// (NVFlare's make_reply(rc)).
type RequestError struct {
	Code string
	Err  error
}

func (e *RequestError) Error() string { return "download request: " + e.Code + ": " + e.Err.Error() }
func (e *RequestError) Unwrap() error { return e.Err }

func refuse(code, format string, args ...any) error {
	return &RequestError{Code: code, Err: fmt.Errorf(format, args...)}
}

// Handle answers a request of the cell requester (its cn__origin) with
// the reply's payload, as NVFlare's download service does: the next
// items of the batch after the request's state, or eof once the requester
// has had them all. A request for a batch not held (unknown, expired, or
// finished for others) is a *RequestError of invalid_request; a finished
// batch asked for again by one of its receivers is eof.
func (s *Service) Handle(requester string, payload []byte) ([]byte, error) {
	c, err := lobs.Decode(payload, lobs.V27)
	if err != nil {
		return nil, refuse(CodeInvalidRequest, "%w", err)
	}
	v, err := fobs.Decode(c, fobs.Options{})
	if err != nil {
		return nil, refuse(CodeInvalidRequest, "%w", err)
	}
	req, _ := v.(msgpk.Map)
	ref := req.String(keyRefID)
	if ref == "" {
		return nil, refuse(CodeInvalidRequest, "no %s", keyRefID)
	}
	// NVFlare's CacheableObject: the state is the previous reply's
	// {start, count}; the next reply starts after it. Other keys (those
	// of later NVFlare versions) are not ours to answer and are ignored.
	var start, count int64
	if st, _ := req.Get(keyState); st != nil {
		m, ok := st.(msgpk.Map)
		var ok1, ok2 bool
		start, ok1 = intOr0(m, keyStart)
		count, ok2 = intOr0(m, keyCount)
		if !ok || !ok1 || !ok2 || start < 0 || count < 0 {
			return nil, refuse(CodeProcessException, "batch %s: bad state %v", flare.LogSafe(ref), flare.LogCut(fmt.Sprint(st)))
		}
	}

	now := time.Now()
	s.mu.Lock()
	b := s.batches[ref]
	if b == nil {
		f := s.finishedLocked(ref, now)
		s.mu.Unlock()
		if f != nil && f.receivers[requester] {
			return eofReply(), nil
		}
		return nil, refuse(CodeInvalidRequest, "no batch %s", flare.LogSafe(ref))
	}
	b.last = now
	size := int64(len(b.items))
	if start > size || count > size-start {
		s.mu.Unlock()
		return nil, refuse(CodeProcessException, "batch %s: state start %d count %d past its %d items", flare.LogSafe(ref), start, count, size)
	}
	next := int(start + count)
	if next == len(b.items) {
		b.receivers[requester] = true
		fin := s.cfg.Receivers > 0 && len(b.receivers) >= s.cfg.Receivers
		if fin {
			b.timer.Stop()
			delete(s.batches, ref)
			s.addFinishedLocked(ref, b.receivers, now)
		}
		s.mu.Unlock()
		if fin {
			s.done(ref, DoneFinished)
		}
		return eofReply(), nil
	}
	items := b.items
	s.mu.Unlock()

	end, total := next, 0
	for end < len(items) {
		n := npzLen([]member{allowPickleMember, items[end]})
		if end > next && total+n >= s.cfg.ChunkSize {
			break
		}
		total += n
		end++
	}
	return okReply(next, items[next:end]), nil
}

// intOr0 is m's integer key, 0 if absent (as Python's dict.get(k, 0)).
func intOr0(m msgpk.Map, key string) (int64, bool) {
	v, ok := m.Get(key)
	if !ok {
		return 0, true
	}
	i, ok := v.(int64)
	return i, ok
}

func (s *Service) finishedLocked(ref string, now time.Time) *finished {
	for len(s.order) > 0 {
		f := s.finished[s.order[0]]
		if f != nil && now.Sub(f.at) <= finishedTTL {
			break
		}
		delete(s.finished, s.order[0])
		s.order = s.order[1:]
	}
	return s.finished[ref]
}

func (s *Service) addFinishedLocked(ref string, receivers map[string]bool, now time.Time) {
	if len(s.order) >= maxFinished {
		delete(s.finished, s.order[0])
		s.order = s.order[1:]
	}
	s.finished[ref] = &finished{receivers: receivers, at: now}
	s.order = append(s.order, ref)
}

func eofReply() []byte {
	b, _ := fobs.Encode(msgpk.Map{{Key: keyStatus, Value: statusEOF}}) // plain values always encode
	return b
}

// okReply is the payload {status: ok, state: {start, count}, data: [npz,
// …]} of items from start, written straight into one buffer of its size
// (a LOBS container of the msgpack body) as NVFlare's FOBS writes it.
func okReply(start int, items []member) []byte {
	npzs := make([][]member, len(items))
	body := 1 + fixstrLen(keyStatus) + fixstrLen(statusOK) + fixstrLen(keyState) + 1 +
		fixstrLen(keyStart) + uintLen(uint64(start)) + fixstrLen(keyCount) + uintLen(uint64(len(items))) +
		fixstrLen(keyData) + arrayHeaderLen(len(items))
	for i := range items {
		npzs[i] = []member{allowPickleMember, items[i]}
		n := npzLen(npzs[i])
		body += binHeaderLen(n) + n
	}
	b := make([]byte, 0, 10+body)
	b = append(b, lobs.MarkerMain, 0)
	b = binary.BigEndian.AppendUint64(b, uint64(body))
	b = append(b, 0x83)
	b = appendFixstr(b, keyStatus)
	b = appendFixstr(b, statusOK)
	b = appendFixstr(b, keyState)
	b = append(b, 0x82)
	b = appendFixstr(b, keyStart)
	b = appendUint(b, uint64(start))
	b = appendFixstr(b, keyCount)
	b = appendUint(b, uint64(len(items)))
	b = appendFixstr(b, keyData)
	b = appendArrayHeader(b, len(items))
	for _, ms := range npzs {
		b = appendBinHeader(b, npzLen(ms))
		b = appendNPZ(b, ms)
	}
	return b
}

// The msgpack forms Python's msgpack writes (smallest first), for the
// few values of a reply.

func fixstrLen(s string) int { return 1 + len(s) } // all keys here are under 32 bytes

func appendFixstr(b []byte, s string) []byte { return append(append(b, 0xa0|byte(len(s))), s...) }

func uintLen(v uint64) int {
	switch {
	case v < 128:
		return 1
	case v < 1<<8:
		return 2
	case v < 1<<16:
		return 3
	case v < 1<<32:
		return 5
	}
	return 9
}

func appendUint(b []byte, v uint64) []byte {
	switch {
	case v < 128:
		return append(b, byte(v))
	case v < 1<<8:
		return append(b, 0xcc, byte(v))
	case v < 1<<16:
		return binary.BigEndian.AppendUint16(append(b, 0xcd), uint16(v))
	case v < 1<<32:
		return binary.BigEndian.AppendUint32(append(b, 0xce), uint32(v))
	}
	return binary.BigEndian.AppendUint64(append(b, 0xcf), v)
}

func arrayHeaderLen(n int) int {
	switch {
	case n < 16:
		return 1
	case n < 1<<16:
		return 3
	}
	return 5
}

func appendArrayHeader(b []byte, n int) []byte {
	switch {
	case n < 16:
		return append(b, 0x90|byte(n))
	case n < 1<<16:
		return binary.BigEndian.AppendUint16(append(b, 0xdc), uint16(n))
	}
	return binary.BigEndian.AppendUint32(append(b, 0xdd), uint32(n))
}

func binHeaderLen(n int) int {
	switch {
	case n < 1<<8:
		return 2
	case n < 1<<16:
		return 3
	}
	return 5
}

func appendBinHeader(b []byte, n int) []byte {
	switch {
	case n < 1<<8:
		return append(b, 0xc4, byte(n))
	case n < 1<<16:
		return binary.BigEndian.AppendUint16(append(b, 0xc5), uint16(n))
	}
	return binary.BigEndian.AppendUint32(append(b, 0xc6), uint32(n))
}
