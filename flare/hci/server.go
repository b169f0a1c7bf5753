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
	"net"
	"sort"
	"strings"
	"sync"
	"time"
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

// Server answers the admin console. Users (name → password hash) may log
// in with _login; with TLS, _cert_login admits a user whose client
// certificate has their name as common name.
type Server struct {
	Commands []Command
	Users    map[string]string
	// TLS, if set, must require and verify client certificates.
	TLS *tls.Config
	// MaxRequest bounds a request (an uploaded app travels inside one);
	// default 512 MiB.
	MaxRequest int64
	// IdleTimeout ends sessions idle that long (default 1 h, as NVFlare).
	IdleTimeout time.Duration
	// Logf records every command (the audit trail), never its data.
	Logf func(format string, args ...any)
	// OnShutdown is called after a reply with a shutdown item is sent.
	OnShutdown func()

	mu       sync.Mutex
	sessions map[string]*session
	lis      net.Listener
	closed   bool
}

type session struct {
	user string
	last time.Time
}

func (s *Server) logf(format string, a ...any) {
	if s.Logf != nil {
		s.Logf(format, a...)
	}
}

// Serve answers connections on lis until Close.
func (s *Server) Serve(lis net.Listener) error {
	if s.TLS != nil {
		lis = tls.NewListener(lis, s.TLS)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return net.ErrClosed
	}
	s.lis = lis
	s.mu.Unlock()
	for {
		nc, err := lis.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return err
		}
		go s.serveConn(nc)
	}
}

// Close stops accepting connections.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.lis != nil {
		return s.lis.Close()
	}
	return nil
}

func (s *Server) serveConn(nc net.Conn) {
	defer nc.Close()
	limit := s.MaxRequest
	if limit <= 0 {
		limit = 512 << 20
	}
	c := &Conn{}
	nc.SetDeadline(time.Now().Add(10 * time.Minute))
	if tc, ok := nc.(*tls.Conn); ok {
		if err := tc.Handshake(); err != nil {
			s.logf("admin: TLS handshake with %s failed: %v", nc.RemoteAddr(), err)
			return
		}
		if certs := tc.ConnectionState().PeerCertificates; len(certs) > 0 {
			c.CN = certs[0].Subject.CommonName
		}
	}
	req, err := ReadRequest(nc, limit)
	if err != nil {
		s.logf("admin: request from %s: %v", nc.RemoteAddr(), err)
		c.Error("protocol violation: %v", err)
	} else {
		s.handle(c, req)
	}
	if err := WriteTransmission(nc, &Message{Data: c.items}); err != nil {
		s.logf("admin: reply to %s: %v", nc.RemoteAddr(), err)
	}
	if c.shutdown && s.OnShutdown != nil {
		s.OnShutdown()
	}
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
	user, ok := s.session(c.Token)
	if !ok {
		if c.Token == "" {
			c.Error("not authenticated - no token")
		} else {
			c.Error("not authenticated - no user")
		}
		s.logf("admin: unauthenticated command %q refused", args[0])
		return
	}
	c.User = user
	cmd, err := s.lookup(args[0])
	if err != nil {
		c.Error("%v", err)
		return
	}
	s.logf("admin: %s: %s", user, summary(args))
	cmd.Handler(c)
}

// summary is a command for the audit log: long arguments (uploaded data)
// are cut.
func summary(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		if len(a) > 80 {
			a = fmt.Sprintf("<%d bytes>", len(a))
		}
		out[i] = a
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
	if len(c.Args) != 3 {
		c.String("REJECT")
		return
	}
	user, pwd := c.Args[1], c.Args[2]
	hash, ok := s.Users[user]
	if !ok || !VerifyPassword(hash, pwd) {
		s.logf("admin: login of %q refused", user)
		c.String("REJECT")
		return
	}
	s.newSession(c, user)
}

func (s *Server) certLogin(c *Conn) {
	if len(c.Args) != 2 || c.CN == "" || c.Args[1] != c.CN {
		s.logf("admin: certificate login refused (user %q, certificate %q)", strings.Join(c.Args[1:], " "), c.CN)
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
	s.sessions[tok] = &session{user: user, last: time.Now()}
	s.mu.Unlock()
	s.logf("admin: %s logged in", user)
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
	idle := s.IdleTimeout
	if idle <= 0 {
		idle = time.Hour
	}
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
