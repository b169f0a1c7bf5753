package wire20

import (
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"

	"github.com/flarego/flarego/persistor"
)

// Size limits of the server's requests, by message. gRPC has one limit
// for every method (MaxRecvMsgSize, which it applies to the decompressed
// length too); a Register or a Heartbeat needs a few hundred bytes, and
// only SubmitUpdate carries a model, so the server's codec checks each
// message against its own limit before decompressing further or decoding.
const (
	// maxSmallRequestBytes bounds Register, Heartbeat, Quit, GetTask and
	// the admin channel's Retrieve: names, a token, an FLContext pickle.
	maxSmallRequestBytes = 64 << 10
	// maxReplyBytes bounds an admin reply (a status table, sys_info, a
	// pickled aux reply).
	maxReplyBytes = 1 << 20
	// contributionOverhead is what a SubmitUpdate adds to its Shareable
	// pickle: the client state, its FLContext, protobuf framing.
	contributionOverhead = 1 << 20
)

// maxContributionBytes bounds a SubmitUpdate whatever the model: one
// Shareable pickle of at most MaxPickleBytes and its envelope.
func maxContributionBytes() int { return MaxPickleBytes + contributionOverhead }

// minContributionBytes is the least a SubmitUpdate may carry: enough for
// a small model, a metrics dict or an error reply before any model is known.
const minContributionBytes = 16 << 20

// contributionBytesFor bounds a SubmitUpdate while global is the model:
// a result holds at most one value per parameter of the model, and the
// widest a value can travel is 16 bytes (a float64 in a protocol-2
// pickle, whose bytes go as latin-1 text: up to two bytes each), plus a
// name and a numpy header per tensor and the envelope. A peer, with a
// token or without, can no longer make the server read a gigabyte
// for a model of a few megabytes.
func contributionBytesFor(global *persistor.StateDict) int {
	if global == nil {
		return minContributionBytes
	}
	n := int64(4 << 20) // the envelope: headers, FLContext, protobuf framing
	for _, name := range global.Names() {
		n += 16*int64(global.Get(name).NumElements()) + 1<<10
	}
	return int(min(int64(maxContributionBytes()), max(minContributionBytes, n)))
}

// errTooLarge is a request over its message's limit. (gRPC reports a
// codec's error as Internal whatever it is; the text says what happened.)
func errTooLarge(msg string, limit int) error {
	return fmt.Errorf("%s request larger than its limit of %d bytes", msg, limit)
}

// gunzipLimited decompresses a gzip stream of at most limit bytes. Its
// buffer grows in steps as data arrives but never past limit+1 bytes (a
// bytes.Buffer would double past it, and hold the old and the new copy
// while it grows), and it stops reading one byte past the limit, so a
// small compressed message can never expand into more memory than its
// method may hold.
func gunzipLimited(data []byte, limit int, msg string) ([]byte, error) {
	zr, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("%s request: bad gzip data: %w", msg, err)
	}
	out := make([]byte, 0, min(limit+1, max(64<<10, 4*len(data))))
	for {
		if len(out) == cap(out) {
			if len(out) > limit {
				return nil, errTooLarge(msg, limit)
			}
			out = append(make([]byte, 0, min(limit+1, 2*cap(out))), out...)
		}
		n, err := zr.Read(out[len(out):cap(out)])
		out = out[:len(out)+n]
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s request: bad gzip data: %w", msg, err)
		}
	}
	if len(out) > limit {
		return nil, errTooLarge(msg, limit)
	}
	return out, nil
}

// maxConns bounds the connections the server holds open at once: each
// costs buffers (about 100 KB) whether or not it ever authenticates. A
// connection past the bound waits in the listen backlog until one closes.
const maxConns = 1024

// A connection may only send what its calls may carry. gRPC reads a
// whole request before the codec can hold it to its method's limit, and
// it knows one limit for all methods (a SubmitUpdate's), so without this a
// peer could send a gigabyte as a "Register". Each connection has a read
// credit: baseCredit to begin with, plus, for each call the gate admits,
// what that call's request may hold. Credit beyond baseCredit is kept
// only while a SubmitUpdate is open (a connection cannot save up the
// credit of many small calls for one large one). A connection that reads
// past its credit is closed.
const baseCredit = 2 << 20

// limitListener accepts at most cap(sem) connections at a time and
// registers each, by remote address, for the gate to find (conns).
type limitListener struct {
	net.Listener
	sem       chan struct{}
	conns     *sync.Map // remote address → *limitConn
	closed    chan struct{}
	closeOnce sync.Once
}

func newLimitListener(l net.Listener, n int, conns *sync.Map) net.Listener {
	return &limitListener{Listener: l, sem: make(chan struct{}, n), conns: conns, closed: make(chan struct{})}
}

func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.sem <- struct{}{}:
	case <-l.closed:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.sem
		return nil, err
	}
	lc := &limitConn{Conn: c, credit: baseCredit}
	key := c.RemoteAddr().String()
	// Only TCP addresses tell connections apart; others are not held to a credit.
	_, tcp := c.RemoteAddr().(*net.TCPAddr)
	lc.tracked = tcp && l.conns != nil
	lc.release = func() {
		if lc.tracked {
			l.conns.CompareAndDelete(key, lc)
		}
		<-l.sem
	}
	if lc.tracked {
		l.conns.Store(key, lc)
	}
	return lc, nil
}

// Close also ends an Accept waiting for a free place.
func (l *limitListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

type limitConn struct {
	net.Conn
	once    sync.Once
	release func()

	tracked bool
	mu      sync.Mutex
	credit  int64 // bytes the peer may still send
	open    int64 // the limits of the SubmitUpdates in flight
}

func (c *limitConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && c.tracked {
		c.mu.Lock()
		c.credit -= int64(n)
		over := c.credit < 0
		c.mu.Unlock()
		if over {
			c.Conn.Close()
			return 0, fmt.Errorf("connection from %s sent more than its calls may carry", c.RemoteAddr())
		}
	}
	return n, err
}

// grant adds a call's request limit to the credit (with room for HTTP/2
// and TLS framing); large calls keep theirs until ungrant.
func (c *limitConn) grant(limit int64, large bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if large {
		c.open += limit
	}
	c.credit = min(c.credit+limit+limit/32+16<<10, baseCredit+c.open+c.open/32)
}

func (c *limitConn) ungrant(limit int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.open -= limit
	c.credit = min(c.credit, baseCredit+c.open+c.open/32)
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
