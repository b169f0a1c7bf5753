package flare

import (
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/flarego/flarego/internal/logsafe"
)

// MaxNameBytes bounds a name a peer gives itself or its project. NVFlare's
// provisioned names (site-1, example_project, admin@nvidia.com) are far
// shorter.
const MaxNameBytes = 128

// CheckName refuses a peer-supplied name that is empty, longer than
// MaxNameBytes, or holds anything but letters, digits and "-_.@": such a
// name ends up in log lines, file names and console tables, where a
// newline or an escape sequence would forge or garble them. what says
// which name it is ("client name").
func CheckName(what, name string) error {
	if name == "" {
		return fmt.Errorf("%s is empty", what)
	}
	if len(name) > MaxNameBytes {
		return fmt.Errorf("%s is %d bytes long (at most %d)", what, len(name), MaxNameBytes)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || ('0' <= c && c <= '9') || strings.IndexByte("-_.@", c) >= 0 {
			continue
		}
		return fmt.Errorf("%s %s holds %q (letters, digits and -_.@ only)", what, LogSafe(name), c)
	}
	return nil
}

// maxLogBytes bounds one peer-supplied value in a log line.
const maxLogBytes = 200

// LogSafe makes a peer-supplied string fit for a log line: control and
// non-printable characters (newlines above all, which would forge log
// lines) are escaped as Go does in quoted strings, and a string whose
// escaped form is longer than maxLogBytes is cut, saying how long the
// whole was.
func LogSafe(s string) string { return escapeCut(s, maxLogBytes) }

// escapeCut is LogSafe with its own bound: the result, the note of what
// was cut included, is at most max bytes (max ≥ 32).
func escapeCut(s string, max int) string { return logsafe.Escape(s, max) }

// logCut shortens a peer's string before it is quoted (%q, which escapes)
// into a message.
func logCut(s string) string {
	const n = 64
	if len(s) <= n {
		return s
	}
	i := n
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i] + "…"
}

// logSafeErr is LogSafe for an error, whose text may quote peer input.
func logSafeErr(err error) string { return LogSafe(err.Error()) }

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

// maxContributionBytes bounds a SubmitUpdate: one Shareable pickle of at
// most MaxPickleBytes and its envelope.
func maxContributionBytes() int { return MaxPickleBytes + contributionOverhead }

// errTooLarge is a request over its message's limit. (gRPC reports a
// codec's error as Internal whatever it is; the text says what happened.)
func errTooLarge(msg string, limit int) error {
	return fmt.Errorf("%s request larger than its limit of %d bytes", msg, limit)
}

// gunzipLimited decompresses a gzip stream of at most limit bytes: it
// stops reading one byte past the limit, so a small compressed message
// can never expand into more memory than its method may hold.
func gunzipLimited(data []byte, limit int, msg string) ([]byte, error) {
	zr, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("%s request: bad gzip data: %w", msg, err)
	}
	var out bytes.Buffer
	// Grow in steps, not to the limit: the limit is a bound, not a size.
	n, err := out.ReadFrom(io.LimitReader(zr, int64(limit)+1))
	if err != nil {
		return nil, fmt.Errorf("%s request: bad gzip data: %w", msg, err)
	}
	if n > int64(limit) {
		return nil, errTooLarge(msg, limit)
	}
	if err := zr.Close(); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s request: bad gzip data: %w", msg, err)
	}
	return out.Bytes(), nil
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
