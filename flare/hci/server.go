package hci

import (
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/flarego/flarego/internal/logsafe"
)

// Password hashes are NVFlare's: 64 hex characters of salt, then the hex
// PBKDF2-HMAC-SHA512 (100000 iterations) of the password with those
// characters as salt.
const pbkdf2Iterations = 100000

// HashPassword hashes a password for a Server's Users.
func HashPassword(password string) (string, error) {
	var r [60]byte
	if _, err := rand.Read(r[:]); err != nil {
		return "", err
	}
	s := sha256.Sum256(r[:])
	salt := hex.EncodeToString(s[:])
	key, err := pbkdf2.Key(sha512.New, password, []byte(salt), pbkdf2Iterations, sha512.Size)
	if err != nil {
		return "", err
	}
	return salt + hex.EncodeToString(key), nil
}

// VerifyPassword checks a password against a hash from HashPassword (or
// NVFlare's hash_password).
func VerifyPassword(stored, password string) bool {
	if len(stored) != 64+2*sha512.Size {
		return false
	}
	key, err := pbkdf2.Key(sha512.New, password, []byte(stored[:64]), pbkdf2Iterations, sha512.Size)
	if err != nil {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(hex.EncodeToString(key)), []byte(stored[64:])) == 1
}

// Conn is one command being served: who sent it, its arguments, and the
// reply being built.
type Conn struct {
	User  string   // the logged-in user ("" for the login commands)
	CN    string   // the client certificate's common name (TLS only)
	Token string   // the session token
	Args  []string // the command split into words; Args[0] is its name

	items    []Item
	shutdown bool
	addr     string    // the peer's address for login limits (addrKey)
	loginBy  time.Time // when a stranger's time is up
}

// String adds a string item.
func (c *Conn) String(format string, a ...any) { c.add(TypeString, fmt.Sprintf(format, a...)) }

// Success adds a success item.
func (c *Conn) Success(s string) { c.add(TypeSuccess, s) }

// Error adds an error item; NVFlare's clients stop reading the reply there.
func (c *Conn) Error(format string, a ...any) { c.add(TypeError, fmt.Sprintf(format, a...)) }

// Table adds a table.
func (c *Conn) Table(header []string, rows [][]string) {
	c.items = append(c.items, TableItem(header, rows))
}

// Dict adds a dict item.
func (c *Conn) Dict(v any) {
	it, err := DictItem(v)
	if err != nil {
		c.Error("%v", err)
		return
	}
	c.items = append(c.items, it)
}

// Shutdown adds a shutdown item and makes the server stop after replying.
func (c *Conn) Shutdown(msg string) {
	c.add(TypeShutdown, msg)
	c.shutdown = true
}

func (c *Conn) add(typ, s string) { c.items = append(c.items, TextItem(typ, s)) }

// Command is a server command.
type Command struct {
	Scope   string // e.g. "training"; the command is also reachable as scope.name
	Name    string
	Desc    string
	Usage   string
	Confirm string // "auth" asks the console to confirm
	Visible bool   // listed by _commands
	Handler func(*Conn)
}

// Limits a Server applies when its fields leave them zero.
const (
	DefaultMaxRequest       = 256 << 20
	DefaultMaxLoginRequest  = 16 << 10
	DefaultMaxConns         = 64
	DefaultMaxUnauthConns   = 32
	DefaultLoginTimeout     = 10 * time.Second
	DefaultMaxLoginFailures = 5
	DefaultLockOut          = 5 * time.Minute
	DefaultFailuresPerMin   = 30
)

// Server answers the admin console. Users (name → password hash) may log
// in with _login; with TLS, _cert_login admits a user whose client
// certificate has their name as common name.
//
// Until a request has shown a valid token (or logged in) its peer is a
// stranger: it gets LoginTimeout for the TLS handshake and its request,
// which may be MaxLoginRequest bytes long. Only an upload from an address
// with a live session may be longer (up to MaxRequest), one at a time.
// At most MaxUnauthConns strangers are read at once (a new one closes the
// oldest) and MaxConns connections are open at once. A password login
// from an address that failed MaxLoginFailures times in a row for that
// user is refused for LockOut; past FailuresPerMin failed logins a minute
// in all, only addresses that logged in before may try.
type Server struct {
	Commands []Command
	Users    map[string]string
	// TLS, if set, must require and verify client certificates.
	TLS *tls.Config
	// MaxRequest bounds an upload's request (an uploaded app travels
	// inside one); MaxLoginRequest every other request.
	MaxRequest, MaxLoginRequest int64
	// MaxConns bounds open connections, MaxUnauthConns those whose
	// request is still being read.
	MaxConns, MaxUnauthConns int
	// LoginTimeout bounds the TLS handshake and the reading of a request
	// before it is known to come from a logged-in user.
	LoginTimeout time.Duration
	// MaxLoginFailures, LockOut and FailuresPerMin limit password guessing.
	MaxLoginFailures int
	LockOut          time.Duration
	FailuresPerMin   int
	// IdleTimeout ends sessions idle that long (default 1 h, as NVFlare).
	IdleTimeout time.Duration
	// Logf records every command (the audit trail), never its data.
	Logf func(format string, args ...any)
	// OnShutdown is called after a reply with a shutdown item is sent.
	OnShutdown func()

	once     sync.Once
	mu       sync.Mutex
	sessions map[string]*session
	lis      net.Listener
	closed   bool
	done     chan struct{} // closed by Close
	conns    map[*tracked]struct{}
	reading  int  // connections of conns still reading their request
	upload   bool // an upload longer than MaxLoginRequest is being read
	checks   chan struct{}
	limiter  loginLimiter
	quiet    logBudget
	verify   func(hash, password string) bool // VerifyPassword where nil; tests count checks
}

// maxSessions bounds the live sessions.
const maxSessions = 1024

type session struct {
	user string
	addr string // where the login came from
	last time.Time
}

// tracked is an open connection.
type tracked struct {
	nc      net.Conn
	start   time.Time
	reading bool
}

func (s *Server) init() {
	s.once.Do(func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.done = make(chan struct{})
		s.conns = map[*tracked]struct{}{}
		s.checks = make(chan struct{}, 2) // PBKDF2 checks at once (≈ 50 ms of CPU each)
		s.limiter.max = orDefault(s.MaxLoginFailures, DefaultMaxLoginFailures)
		s.limiter.lockOut = orDefault(s.LockOut, DefaultLockOut)
		s.limiter.perMin = orDefault(s.FailuresPerMin, DefaultFailuresPerMin)
	})
}

func orDefault[T int | int64 | time.Duration](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}

func (s *Server) logf(format string, a ...any) {
	if s.Logf != nil {
		s.Logf(format, a...)
	}
}

// strangerLogf logs what strangers cause (refused connections, bad
// requests, failed logins) within a budget, so that a flood of them
// cannot flood the log.
func (s *Server) strangerLogf(format string, a ...any) {
	if s.Logf == nil {
		return
	}
	ok, dropped := s.quiet.take(time.Now())
	if dropped > 0 {
		s.Logf("admin: %d messages about refused connections and requests left out", dropped)
	}
	if ok {
		s.Logf(format, a...)
	}
}

// logBudget allows logBurst lines per logWindow.
type logBudget struct {
	mu      sync.Mutex
	start   time.Time
	n       int
	dropped int
}

const (
	logBurst  = 20
	logWindow = 10 * time.Second
)

func (b *logBudget) take(now time.Time) (ok bool, dropped int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if now.Sub(b.start) > logWindow {
		b.start, b.n, dropped, b.dropped = now, 0, b.dropped, 0
	}
	if b.n >= logBurst {
		b.dropped++
		return false, dropped
	}
	b.n++
	return true, dropped
}

// Serve answers connections on lis until Close. Like net/http's Server,
// it waits and tries again when accepting fails for want of resources
// (EMFILE and the like) instead of giving up the console.
func (s *Server) Serve(lis net.Listener) error {
	s.init()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return net.ErrClosed
	}
	s.lis = lis
	s.mu.Unlock()
	var delay time.Duration
	for {
		nc, err := lis.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return nil
			}
			if !retryable(err) {
				return err
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.strangerLogf("admin: accepting a connection: %v; trying again in %v", err, delay)
			select {
			case <-time.After(delay):
			case <-s.done:
				return nil
			}
			continue
		}
		delay = 0
		t, open := s.admit(nc)
		if t == nil {
			s.strangerLogf("admin: connection from %s refused: %d connections open", nc.RemoteAddr(), open)
			if s.TLS == nil {
				// A fresh socket's send buffer takes this at once.
				nc.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
				WriteTransmission(nc, &Message{Data: []Item{TextItem(TypeError, "too many connections to the admin console; try again later")}})
			}
			nc.Close()
			continue
		}
		go s.serveConn(t)
	}
}

// retryable says whether an Accept error is one to wait out.
func retryable(err error) bool {
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED, syscall.ECONNRESET} {
		if errors.Is(err, e) {
			return true
		}
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	var tmp interface{ Temporary() bool }
	return errors.As(err, &tmp) && tmp.Temporary()
}

// admit counts a new connection in, first closing the oldest one still
// reading its request if strangers fill their share or all connections
// are taken; it refuses the connection when every open one is past its
// request (nil, and how many are open).
func (s *Server) admit(nc net.Conn) (*tracked, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.reading >= orDefault(s.MaxUnauthConns, DefaultMaxUnauthConns) || len(s.conns) >= orDefault(s.MaxConns, DefaultMaxConns) {
		var oldest *tracked
		for t := range s.conns {
			if t.reading && (oldest == nil || t.start.Before(oldest.start)) {
				oldest = t
			}
		}
		if oldest != nil {
			oldest.reading = false
			s.reading--
			delete(s.conns, oldest)
			oldest.nc.Close()
		}
	}
	if len(s.conns) >= orDefault(s.MaxConns, DefaultMaxConns) {
		return nil, len(s.conns)
	}
	t := &tracked{nc: nc, start: time.Now(), reading: true}
	s.conns[t] = struct{}{}
	s.reading++
	return t, len(s.conns)
}

// doneReading takes a connection out of the strangers' share.
func (s *Server) doneReading(t *tracked) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t.reading {
		t.reading = false
		s.reading--
	}
}

func (s *Server) release(t *tracked) {
	s.doneReading(t)
	s.mu.Lock()
	delete(s.conns, t)
	s.mu.Unlock()
}

// Close stops accepting connections.
func (s *Server) Close() error {
	s.init()
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		close(s.done)
	}
	s.closed = true
	if s.lis != nil {
		return s.lis.Close()
	}
	return nil
}

func (s *Server) serveConn(t *tracked) {
	nc := t.nc
	defer s.release(t)
	defer func() { nc.Close() }() // the TLS connection once there is one
	c := &Conn{addr: addrKey(nc.RemoteAddr())}
	loginBy := t.start.Add(orDefault(s.LoginTimeout, DefaultLoginTimeout))
	nc.SetDeadline(loginBy)
	if s.TLS != nil {
		tc := tls.Server(nc, s.TLS)
		if err := tc.Handshake(); err != nil {
			s.strangerLogf("admin: TLS handshake with %s failed: %v", nc.RemoteAddr(), err)
			return
		}
		if certs := tc.ConnectionState().PeerCertificates; len(certs) > 0 {
			c.CN = certs[0].Subject.CommonName
		}
		nc = tc
	}
	req, uploading, err := s.readRequest(t, nc, c.addr)
	release := func() {}
	if uploading {
		release = sync.OnceFunc(s.endUpload)
		defer release()
	}
	s.doneReading(t)
	if err != nil {
		// The error may quote the request.
		s.strangerLogf("admin: request from %s: %s", nc.RemoteAddr(), logsafe.Escape(err.Error(), 200))
		c.Error("protocol violation: %v", err)
		if errors.Is(err, ErrTooLarge) {
			// The peer may still be sending: closing now would reset the
			// connection and lose the reply. The upload slot is not held
			// through the linger: nothing more of this request is kept.
			release()
			defer lingerClose(nc)
		}
	} else {
		c.loginBy = loginBy
		s.handle(c, req)
	}
	if c.User != "" {
		nc.SetDeadline(time.Now().Add(10 * time.Minute))
	} else {
		nc.SetDeadline(time.Now().Add(orDefault(s.LoginTimeout, DefaultLoginTimeout)))
	}
	if err := WriteTransmission(nc, &Message{Data: c.items}); err != nil {
		s.strangerLogf("admin: reply to %s: %v", nc.RemoteAddr(), err)
	}
	if c.shutdown && s.OnShutdown != nil {
		s.OnShutdown()
	}
}

// readRequest reads a request of at most MaxLoginRequest bytes; a longer
// one goes on (to MaxRequest, with a fresh deadline) only if it starts as
// an upload, its address has a live session and no other long upload is
// being read. uploading says the upload slot is held.
func (s *Server) readRequest(t *tracked, nc net.Conn, addr string) (req *Message, uploading bool, err error) {
	small := clampLimit(min(orDefault(s.MaxLoginRequest, DefaultMaxLoginRequest), orDefault(s.MaxRequest, DefaultMaxRequest)))
	data, err := readUntilEnd(nc, nil, small)
	if errors.Is(err, ErrTooLarge) {
		if err := s.startUpload(data, addr, small); err != nil {
			return nil, false, err
		}
		s.doneReading(t)
		nc.SetDeadline(time.Now().Add(10 * time.Minute))
		data, err = readUntilEnd(nc, data, clampLimit(orDefault(s.MaxRequest, DefaultMaxRequest)))
		if err != nil {
			return nil, true, err
		}
		req, err = parseRequest(data)
		return req, true, err
	}
	if err != nil {
		return nil, false, err
	}
	req, err = parseRequest(data)
	return req, false, err
}

// lingerClose ends a connection whose request was not read to its end:
// it half-closes and drops what the peer sends for a moment, so that the
// reply sent before is read rather than lost to a reset.
func lingerClose(nc net.Conn) {
	type closeWriter interface{ CloseWrite() error }
	if cw, ok := nc.(closeWriter); ok {
		cw.CloseWrite()
	}
	nc.SetReadDeadline(time.Now().Add(time.Second))
	io.CopyN(io.Discard, nc, 1<<20)
}

// startUpload takes the slot for a request longer than the login limit.
func (s *Server) startUpload(prefix []byte, addr string, small int) error {
	if !uploadPrefix.Match(prefix) {
		return fmt.Errorf("%w: request larger than %d bytes (only an upload may be larger)", ErrTooLarge, small)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	live := false
	for _, ss := range s.sessions {
		if ss.addr == addr && time.Since(ss.last) <= s.idleTimeout() {
			live = true
			break
		}
	}
	if !live {
		return fmt.Errorf("%w: an upload larger than %d bytes needs a login from this address first", ErrTooLarge, small)
	}
	if s.upload {
		return fmt.Errorf("%w: another upload is being received; try again when it is done", ErrTooLarge)
	}
	s.upload = true
	return nil
}

func (s *Server) endUpload() {
	s.mu.Lock()
	s.upload = false
	s.mu.Unlock()
}

func (s *Server) idleTimeout() time.Duration { return orDefault(s.IdleTimeout, time.Hour) }

// addrKey is the address a peer is known by for login limits: its IP, or
// for IPv6 its /64 (one host may hold all of one).
func addrKey(a net.Addr) string {
	host := a.String()
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return host
	}
	if v4 := ip.To4(); v4 != nil {
		return v4.String()
	}
	return ip.Mask(net.CIDRMask(64, 128)).String() + "/64"
}

func (s *Server) handle(c *Conn, req *Message) {
	var command string
	var haveCmd bool
	for _, it := range req.Data {
		switch it.Type {
		case TypeCommand:
			if !haveCmd {
				command, haveCmd = it.Text(), true
			}
		case TypeToken:
			if c.Token == "" {
				c.Token = it.Text()
			}
		}
	}
	if !haveCmd {
		c.Error("protocol violation")
		return
	}
	// The token is checked before a long command is split: only a
	// session's own uploads are worth the work.
	user, ok := s.session(c.Token)
	if !ok && int64(len(command)) > orDefault(s.MaxLoginRequest, DefaultMaxLoginRequest) {
		c.Error("not authenticated - no user")
		s.strangerLogf("admin: unauthenticated request of %d bytes from %s refused", len(command), c.addr)
		return
	}
	args, err := SplitArgs(command)
	if err != nil || len(args) == 0 || args[0] == "" {
		c.Error("syntax error in command")
		return
	}
	c.Args = args
	switch args[0] {
	case "_login":
		s.login(c)
		return
	case "_cert_login":
		s.certLogin(c)
		return
	}
	if !ok {
		if c.Token == "" {
			c.Error("not authenticated - no token")
		} else {
			c.Error("not authenticated - no user")
		}
		s.strangerLogf("admin: unauthenticated command %s from %s refused", logsafe.Quote(args[0], 80), c.addr)
		return
	}
	c.User = user
	cmd, err := s.lookup(args[0])
	if err != nil {
		c.Error("%v", err)
		return
	}
	s.logf("admin: %s: %s", logsafe.Quote(user, 200), summary(args))
	cmd.Handler(c)
}

// summary is a command for the audit log: long arguments (uploaded data)
// are cut, odd ones quoted, so that the arguments stay apart.
func summary(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = logsafe.Quote(a, 80)
	}
	return strings.Join(out, " ")
}

func (s *Server) lookup(name string) (*Command, error) {
	var found []*Command
	for i := range s.Commands {
		cmd := &s.Commands[i]
		if cmd.Name == name || (cmd.Scope != "" && cmd.Scope+"."+cmd.Name == name) {
			found = append(found, cmd)
		}
	}
	switch {
	case name == "_commands":
		return &Command{Name: "_commands", Handler: s.listCommands}, nil
	case name == "_logout":
		return &Command{Name: "_logout", Handler: s.logout}, nil
	case len(found) == 0:
		//lint:ignore ST1005 NVFlare's console says it in these words
		return nil, fmt.Errorf("Unknown command %q", name)
	case len(found) > 1:
		return nil, fmt.Errorf("Command %q exists in multiple scopes. Please use full command name", name)
	}
	return found[0], nil
}

func (s *Server) listCommands(c *Conn) {
	cmds := append([]Command(nil), s.Commands...)
	sort.SliceStable(cmds, func(i, j int) bool {
		if cmds[i].Scope != cmds[j].Scope {
			return cmds[i].Scope < cmds[j].Scope
		}
		return cmds[i].Name < cmds[j].Name
	})
	var rows [][]string
	for _, cmd := range cmds {
		if cmd.Visible {
			confirm := cmd.Confirm
			if confirm == "" {
				confirm = "none"
			}
			rows = append(rows, []string{cmd.Scope, cmd.Name, cmd.Desc, cmd.Usage, confirm})
		}
	}
	c.Table([]string{"Scope", "Command", "Description", "Usage", "Confirm"}, rows)
}

func (s *Server) login(c *Conn) {
	if len(c.Args) != 3 || len(s.Users) == 0 {
		c.String("REJECT")
		return
	}
	user, pwd := c.Args[1], c.Args[2]
	hash, known := s.Users[user]
	// Names that are no user share one entry: guessing names cannot grow
	// the table or escape the limit.
	key := ""
	if known {
		key = user
	}
	at, wait, global := s.limiter.reserve(c.addr, key, time.Now())
	if wait > 0 {
		wait = wait.Round(time.Second) + time.Second
		if global {
			c.Error("too many failed logins on this console; try again in %v", wait)
		} else {
			c.Error("too many failed logins for %s from %s; try again in %v", logsafe.Quote(user, 80), c.addr, wait)
		}
		return
	}
	// A bounded number of checks run at once; a stranger waits at most
	// until its login deadline.
	select {
	case s.checks <- struct{}{}:
	default:
		wait := time.NewTimer(time.Until(c.loginBy))
		defer wait.Stop()
		select {
		case s.checks <- struct{}{}:
		case <-wait.C:
			s.limiter.release(at)
			c.Error("the console is busy checking logins; try again")
			return
		}
	}
	if !known {
		hash = dummyHash() // the same work for a wrong name as for a wrong password
	}
	verify := VerifyPassword
	if s.verify != nil {
		verify = s.verify
	}
	ok := verify(hash, pwd) && known
	<-s.checks
	if !ok {
		if at.locked {
			s.strangerLogf("admin: login of %s from %s refused, %d failures in a row: locked for %v", logsafe.Quote(user, 80), c.addr, at.n, s.limiter.lockOut)
		} else {
			s.strangerLogf("admin: login of %s from %s refused", logsafe.Quote(user, 80), c.addr)
		}
		c.String("REJECT")
		return
	}
	s.limiter.succeed(at, time.Now())
	s.newSession(c, user)
}

var dummyHash = sync.OnceValue(func() string {
	h, err := HashPassword("")
	if err != nil {
		panic(err) // crypto/rand does not fail
	}
	return h
})

func (s *Server) certLogin(c *Conn) {
	if len(c.Args) != 2 || c.CN == "" || c.Args[1] != c.CN {
		s.strangerLogf("admin: certificate login refused (user %s, certificate %s)", logsafe.Quote(strings.Join(c.Args[1:], " "), 80), logsafe.Quote(c.CN, 80))
		c.String("REJECT")
		return
	}
	s.newSession(c, c.Args[1])
}

func (s *Server) newSession(c *Conn, user string) {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	tok := fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
	s.mu.Lock()
	if s.sessions == nil {
		s.sessions = map[string]*session{}
	}
	if len(s.sessions) >= maxSessions {
		// Logins that never log out (scripts) must not grow the table:
		// the session idle longest goes.
		var oldest string
		for t, ss := range s.sessions {
			if oldest == "" || ss.last.Before(s.sessions[oldest].last) {
				oldest = t
			}
		}
		delete(s.sessions, oldest)
	}
	s.sessions[tok] = &session{user: user, addr: c.addr, last: time.Now()}
	s.mu.Unlock()
	s.logf("admin: %s logged in from %s", logsafe.Quote(user, 200), c.addr)
	c.String("OK")
	c.add(TypeToken, tok)
}

func (s *Server) logout(c *Conn) {
	s.mu.Lock()
	delete(s.sessions, c.Token)
	s.mu.Unlock()
	c.String("OK")
}

// session finds the live session of a token, ending idle ones.
func (s *Server) session(tok string) (string, bool) {
	idle := s.idleTimeout()
	s.mu.Lock()
	defer s.mu.Unlock()
	for t, ss := range s.sessions {
		if time.Since(ss.last) > idle {
			delete(s.sessions, t)
		}
	}
	ss, ok := s.sessions[tok]
	if !ok || tok == "" {
		return "", false
	}
	ss.last = time.Now()
	return ss.user, true
}
