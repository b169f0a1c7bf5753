package hci

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// dialFrom connects to addr from a local IP (127.0.0.1 when from is ""),
// skipping the test where that loopback address cannot be used (only
// Linux routes all of 127/8 to lo).
func dialFrom(t *testing.T, from, addr string) net.Conn {
	t.Helper()
	d := &net.Dialer{Timeout: 5 * time.Second}
	if from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		if from != "" {
			t.Skipf("cannot connect from %s: %v", from, err)
		}
		t.Fatal(err)
	}
	return nc
}

// exchange sends one raw request and reads the reply's items.
func exchange(t *testing.T, nc net.Conn, raw []byte) ([]Item, error) {
	t.Helper()
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	go nc.Write(raw)
	msgs, err := ReadReply(nc, 1<<20)
	var items []Item
	for _, m := range msgs {
		items = append(items, m.Data...)
	}
	return items, err
}

func request(cmd, tok string) []byte {
	var buf bytes.Buffer
	m := &Message{Data: []Item{TextItem(TypeCommand, cmd)}}
	if tok != "" {
		m.Data = append(m.Data, TextItem(TypeToken, tok))
	}
	WriteTransmission(&buf, m)
	return buf.Bytes()
}

// loginFrom logs in as user from a local IP and returns the reply's
// string, error and token texts.
func loginFrom(t *testing.T, from, addr, user, pwd string) (text, tok string) {
	t.Helper()
	items, err := exchange(t, dialFrom(t, from, addr), request(JoinArgs([]string{"_login", user, pwd}), ""))
	if err != nil {
		return "read: " + err.Error(), ""
	}
	for _, it := range items {
		switch it.Type {
		case TypeToken:
			tok = it.Text()
		default:
			text += it.Text()
		}
	}
	return text, tok
}

func limitServer(t *testing.T, s *Server) (*Server, string) {
	t.Helper()
	h, _ := HashPassword("admin")
	s.Commands, s.Users = append(s.Commands, testCommands()...), map[string]string{"admin": h}
	return s, serve(t, s)
}

// A stranger's request is cut off at MaxLoginRequest with an error that
// says so, where it used to be read up to 512 MiB; only an upload from an
// address that logged in may be longer, and only one at a time.
func TestPreLoginHugeHeaderRefused(t *testing.T) {
	s, addr := limitServer(t, &Server{MaxLoginRequest: 4096, MaxRequest: 1 << 20})
	huge := append([]byte(`{"time": "x", "data": [{"type": "command", "data": "_login admin `), bytes.Repeat([]byte("A"), 64<<10)...)
	huge = append(huge, "\"}]}\x03\x04"...)
	items, err := exchange(t, dialFrom(t, "", addr), huge)
	if err != nil || len(items) == 0 || !strings.Contains(items[0].Text(), "request larger than 4096 bytes") {
		t.Fatalf("a 64 KiB login: %+v %v", items, err)
	}
	upload := func(from, tok string, n int) string {
		items, err := exchange(t, dialFrom(t, from, addr), request("file_transfer._upload_folder app "+strings.Repeat("B", n), tok))
		if err != nil {
			return "read: " + err.Error()
		}
		return replyTextOf(items)
	}
	if got := upload("", "", 8<<10); !strings.Contains(got, "needs a login from this address first") {
		t.Fatalf("an upload without a session: %s", got)
	}
	if text, tok := loginFrom(t, "", addr, "admin", "admin"); tok == "" {
		t.Fatalf("login: %s", text)
	}
	// With a session from 127.0.0.1, an upload from there is read to its
	// end and then refused for its token; one larger than MaxRequest is cut.
	if got := upload("", "forged", 8<<10); !strings.Contains(got, "not authenticated") {
		t.Fatalf("an upload with a forged token: %s", got)
	}
	if got := upload("", "forged", 2<<20); !strings.Contains(got, "larger than 1048576") {
		t.Fatalf("an upload past MaxRequest: %s", got)
	}
	if got := upload("127.0.0.2", "forged", 8<<10); !strings.Contains(got, "needs a login from this address first") {
		t.Fatalf("an upload from another address: %s", got)
	}
	// The slot is one: a second long upload while one is being read is
	// refused at once. The uploads above have let go of it.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		s.mu.Lock()
		busy := s.upload
		s.mu.Unlock()
		if !busy {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the upload slot is still held after the refused uploads")
		}
	}
	slow := dialFrom(t, "", addr)
	defer slow.Close()
	slow.Write(request("_upload_folder app "+strings.Repeat("C", 8<<10), "")[:6<<10])
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		s.mu.Lock()
		busy := s.upload
		s.mu.Unlock()
		if busy {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the slow upload did not take the slot")
		}
	}
	if got := upload("", "", 8<<10); !strings.Contains(got, "another upload is being received") {
		t.Fatalf("a second upload: %s", got)
	}
}

func replyTextOf(items []Item) string {
	var b strings.Builder
	for _, it := range items {
		b.WriteString(it.Type + ": " + it.Text() + "\n")
	}
	return b.String()
}

// Silent connections before login are bounded: past MaxUnauthConns the
// oldest is closed (so a login still gets through the flood), each is
// closed after LoginTimeout, and past MaxConns a connection gets a clear
// refusal.
func TestPreLoginConnectionFloodBounded(t *testing.T) {
	block := make(chan struct{})
	s, addr := limitServer(t, &Server{MaxUnauthConns: 4, MaxConns: 6, LoginTimeout: 2 * time.Second,
		Commands: []Command{{Name: "block", Handler: func(c *Conn) { <-block }}}})
	var silent []net.Conn
	for i := 0; i < 50; i++ {
		silent = append(silent, dialFrom(t, "", addr))
	}
	defer func() {
		for _, nc := range silent {
			nc.Close()
		}
	}()
	waitFor(t, "the server to see the flood", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.reading == 4 && len(s.conns) == 4
	})
	text, tok := loginFrom(t, "", addr, "admin", "admin")
	if tok == "" {
		t.Fatalf("login during a flood of silent connections: %s", text)
	}
	// A silent connection is closed once its time is up.
	late := dialFrom(t, "", addr)
	start := time.Now()
	late.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(late); err != nil || time.Since(start) > 5*time.Second {
		t.Fatalf("a silent connection: %v after %v", err, time.Since(start))
	}
	// Logged-in commands that take long fill MaxConns: then a new
	// connection is refused with a reason.
	var wg sync.WaitGroup
	for i := 0; i < 6; i++ {
		nc := dialFrom(t, "", addr)
		wg.Add(1)
		go func() {
			defer wg.Done()
			exchange(t, nc, request("block", tok))
		}()
		waitFor(t, "the command to run", func() bool {
			s.mu.Lock()
			defer s.mu.Unlock()
			return len(s.conns) == i+1 && s.reading == 0
		})
	}
	items, err := exchange(t, dialFrom(t, "", addr), request("hello", tok))
	if err != nil || !strings.Contains(replyTextOf(items), "too many connections") {
		t.Fatalf("a connection past MaxConns: %+v %v", items, err)
	}
	close(block)
	wg.Wait()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s", what)
		}
	}
}

// 1,000 wrong passwords used to be checked at ≈ 52/s: now an address is
// locked out after MaxLoginFailures, even for the right password, with a
// reply that says why and for how long; other addresses still log in,
// and the lock ends after LockOut.
func TestLoginBruteForceLockedOut(t *testing.T) {
	var logMu sync.Mutex
	var log bytes.Buffer
	// A lock-out long enough that no slowness of the machine ends it
	// during the 40 guesses; its end is then brought forward by hand.
	s, addr := limitServer(t, &Server{MaxLoginFailures: 3, LockOut: time.Minute,
		Logf: func(f string, a ...any) { logMu.Lock(); fmt.Fprintf(&log, f+"\n", a...); logMu.Unlock() }})
	rejected, locked := 0, 0
	for i := 0; i < 40; i++ {
		text, _ := loginFrom(t, "", addr, "admin", fmt.Sprintf("guess%d", i))
		switch {
		case text == "REJECT":
			rejected++
		case strings.Contains(text, "too many failed logins for admin from 127.0.0.1; try again in"):
			locked++
		default:
			t.Fatalf("attempt %d: %q", i, text)
		}
	}
	if rejected != 3 || locked != 37 {
		t.Fatalf("%d wrong passwords checked, %d locked out; want 3 and 37", rejected, locked)
	}
	if text, tok := loginFrom(t, "", addr, "admin", "admin"); tok != "" || !strings.Contains(text, "too many failed logins") {
		t.Fatalf("the right password during the lock-out: %q", text)
	}
	// Names that are no user share one entry.
	for i := 0; i < 5; i++ {
		loginFrom(t, "", addr, fmt.Sprintf("nobody%d\nforged log line", i), "x")
	}
	if text, _ := loginFrom(t, "", addr, "nobody-else", "x"); !strings.Contains(text, "too many failed logins") {
		t.Fatalf("guessing user names: %q", text)
	}
	if text, tok := loginFrom(t, "127.0.0.2", addr, "admin", "admin"); tok == "" {
		t.Fatalf("login from another address during the lock-out: %q", text)
	}
	s.limiter.mu.Lock()
	for _, f := range s.limiter.fails {
		f.until = time.Now().Add(-time.Second) // the lock-out has passed
	}
	s.limiter.mu.Unlock()
	if text, tok := loginFrom(t, "", addr, "admin", "admin"); tok == "" {
		t.Fatalf("login after the lock-out: %q", text)
	}
	logMu.Lock()
	defer logMu.Unlock()
	if strings.Contains(log.String(), "\nforged log line") || !strings.Contains(log.String(), "locked for 1m0s") {
		t.Fatalf("log:\n%s", log.String())
	}
}

// Many addresses guessing at once exhaust the global budget: then only
// addresses that logged in before may try.
func TestLoginGlobalBudget(t *testing.T) {
	_, addr := limitServer(t, &Server{MaxLoginFailures: 100, FailuresPerMin: 5})
	if _, tok := loginFrom(t, "127.0.0.9", addr, "admin", "admin"); tok == "" {
		t.Fatal("first login")
	}
	for i := 0; i < 5; i++ {
		if text, _ := loginFrom(t, fmt.Sprintf("127.0.1.%d", i+1), addr, "admin", "wrong"); text != "REJECT" {
			t.Fatalf("guess %d: %q", i, text)
		}
	}
	if text, _ := loginFrom(t, "127.0.1.99", addr, "admin", "admin"); !strings.Contains(text, "too many failed logins on this console") {
		t.Fatalf("a new address past the budget: %q", text)
	}
	if text, tok := loginFrom(t, "127.0.0.9", addr, "admin", "admin"); tok == "" {
		t.Fatalf("an address that logged in before, past the budget: %q", text)
	}
}

// Logins sent at once used to pass the limiter together and only then
// wait for a password-check slot, so 30 wrong passwords from one address
// were all checked where the lock-out allows 5: now each counts as a
// failure before it waits, and the rest are refused as locked out.
func TestConcurrentLoginsCannotOutrunLockOut(t *testing.T) {
	var checked atomic.Int32
	s := &Server{verify: func(hash, pwd string) bool {
		checked.Add(1)
		time.Sleep(50 * time.Millisecond) // keep the slots busy while the others arrive
		return VerifyPassword(hash, pwd)
	}}
	_, addr := limitServer(t, s)
	const n = 30
	texts := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			texts[i], _ = loginFrom(t, "", addr, "admin", fmt.Sprintf("guess%d", i))
		}()
	}
	wg.Wait()
	rejected, locked := 0, 0
	for i, text := range texts {
		switch {
		case text == "REJECT":
			rejected++
		case strings.Contains(text, "too many failed logins for admin from 127.0.0.1"):
			locked++
		default:
			t.Fatalf("attempt %d: %q", i, text)
		}
	}
	if got := checked.Load(); got > DefaultMaxLoginFailures || rejected != DefaultMaxLoginFailures || locked != n-DefaultMaxLoginFailures {
		t.Fatalf("%d passwords checked, %d rejected, %d locked out; want %d checked and rejected", got, rejected, locked, DefaultMaxLoginFailures)
	}
	if text, tok := loginFrom(t, "", addr, "admin", "admin"); tok != "" || !strings.Contains(text, "too many failed logins") {
		t.Fatalf("the right password after the burst: %q", text)
	}
}

// The same for the global budget: wrong passwords sent at once from many
// addresses get no more checks than FailuresPerMin, and a right password
// that was checked gives its share back.
func TestConcurrentLoginsCannotOutrunGlobalBudget(t *testing.T) {
	var checked atomic.Int32
	s := &Server{MaxLoginFailures: 100, FailuresPerMin: 5, verify: func(hash, pwd string) bool {
		checked.Add(1)
		time.Sleep(50 * time.Millisecond)
		return VerifyPassword(hash, pwd)
	}}
	_, addr := limitServer(t, s)
	if _, tok := loginFrom(t, "127.0.0.9", addr, "admin", "admin"); tok == "" {
		t.Fatal("first login")
	}
	const n = 20
	texts := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			texts[i], _ = loginFrom(t, fmt.Sprintf("127.0.3.%d", i+1), addr, "admin", "wrong")
		}()
	}
	wg.Wait()
	rejected, refused := 0, 0
	for i, text := range texts {
		switch {
		case text == "REJECT":
			rejected++
		case strings.Contains(text, "too many failed logins on this console"):
			refused++
		default:
			t.Fatalf("attempt %d: %q", i, text)
		}
	}
	if got := checked.Load() - 1; got > 5 || rejected != 5 || refused != n-5 {
		t.Fatalf("%d passwords checked, %d rejected, %d refused; want 5 checked and rejected", got, rejected, refused)
	}
	if text, tok := loginFrom(t, "127.0.0.9", addr, "admin", "admin"); tok == "" {
		t.Fatalf("an address that logged in before, past the budget: %q", text)
	}
}

// flakyListener fails its first Accepts as a process out of file
// descriptors does.
type flakyListener struct {
	net.Listener
	fails atomic.Int32
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if l.fails.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

// EMFILE from Accept used to end Serve, and the console never answered
// again: now it waits and tries again.
func TestAcceptSurvivesEMFILE(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fl := &flakyListener{Listener: lis}
	fl.fails.Store(8)
	var logged atomic.Int32
	h, _ := HashPassword("admin")
	s := &Server{Commands: testCommands(), Users: map[string]string{"admin": h}, Logf: func(f string, a ...any) {
		if strings.Contains(fmt.Sprintf(f, a...), "too many open files") {
			logged.Add(1)
		}
	}}
	served := make(chan error, 1)
	go func() { served <- s.Serve(fl) }()
	t.Cleanup(func() { s.Close() })
	if text, tok := loginFrom(t, "", lis.Addr().String(), "admin", "admin"); tok == "" {
		t.Fatalf("login after EMFILE: %q", text)
	}
	if logged.Load() == 0 {
		t.Error("the accept errors were not logged")
	}
	s.Close()
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve after Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after Close")
	}
	// Errors that are not about resources still end Serve.
	s2 := &Server{}
	if err := s2.Serve(&brokenListener{}); err == nil || !errors.Is(err, errBroken) {
		t.Fatalf("a broken listener: %v", err)
	}
}

var errBroken = errors.New("broken")

type brokenListener struct{ net.Listener }

func (brokenListener) Accept() (net.Conn, error) { return nil, errBroken }
func (brokenListener) Close() error              { return nil }

// An attempt whose password was never checked (the console was busy)
// gives back its failure and its share of the global budget; one that
// proved right forgets the failures.
func TestLoginReservationGivenBack(t *testing.T) {
	l := &loginLimiter{max: 2, lockOut: time.Minute, perMin: 3}
	now := time.Now()
	first, wait, _ := l.reserve("a", "u", now)
	if wait != 0 {
		t.Fatal("first attempt refused")
	}
	second, wait, _ := l.reserve("a", "u", now)
	if wait != 0 || !second.locked {
		t.Fatalf("second attempt: wait %v, locked %v", wait, second.locked)
	}
	if _, wait, _ := l.reserve("a", "u", now); wait == 0 {
		t.Fatal("a third attempt while two are pending")
	}
	l.release(second)
	if l.tokens != 2 || l.fails[limitKey{"a", "u"}].n != 1 {
		t.Fatalf("after release: %v tokens, %d failures", l.tokens, l.fails[limitKey{"a", "u"}].n)
	}
	third, wait, _ := l.reserve("a", "u", now)
	if wait != 0 || !third.locked {
		t.Fatalf("after release: wait %v, locked %v", wait, third.locked)
	}
	l.succeed(first, now)
	if l.tokens != 2 || l.fails[limitKey{"a", "u"}] != nil {
		t.Fatalf("after success: %v tokens, %+v", l.tokens, l.fails)
	}
}
