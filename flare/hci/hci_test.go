package hci

import (
	"bytes"
	"crypto/tls"
	"errors"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/flarego/flarego/internal/testpki"
)

// A hash made by Python's hashlib the way NVFlare's hash_password does:
// sha256 hex salt + hex pbkdf2_hmac('sha512', pwd, salt, 100000).
const pythonHash = "c7f96a11b21f05d841544b2ee898c9638078fbe5c6b90a8453052d81e7fca87a" +
	"3eb185e228fb0619c320db308573a215c5260952c914d50e1d9a8ecb3438623eac4adad15559fe1aa7528d704010dab587f035287b02ccd5b29dc2c5c63a9b79"

func TestPasswords(t *testing.T) {
	if !VerifyPassword(pythonHash, "s3cret pass") {
		t.Fatal("Python's hash of the right password refused")
	}
	if VerifyPassword(pythonHash, "s3cret pas") {
		t.Fatal("wrong password accepted")
	}
	h, err := HashPassword("admin")
	if err != nil {
		t.Fatal(err)
	}
	h2, _ := HashPassword("admin")
	if len(h) != len(pythonHash) || h == h2 {
		t.Fatalf("hash %q: want %d characters and a fresh salt each time", h, len(pythonHash))
	}
	if !VerifyPassword(h, "admin") || VerifyPassword(h, "Admin") || VerifyPassword(h[:100], "admin") {
		t.Fatal("verification of our own hash")
	}
}

func TestSplitArgs(t *testing.T) {
	for _, c := range []struct {
		in   string
		want []string
	}{
		{"check_status  server", []string{"check_status", "server"}},
		{"deploy_app app client site-1 site-2", []string{"deploy_app", "app", "client", "site-1", "site-2"}},
		// shlex.split's answers (Python 3.11).
		{`a "b c" d`, []string{"a", "b c", "d"}},
		{`x "y\"z" w`, []string{"x", `y"z`, "w"}},
		{`_login "my user" 'p w'`, []string{"_login", "my user", "p w"}},
	} {
		got, err := SplitArgs(c.in)
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("SplitArgs(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	if _, err := SplitArgs(`it's "q"`); err == nil {
		t.Error("unclosed quote accepted")
	}
	for _, args := range [][]string{{"_login", "admin", "pass word"}, {"upload", "x", `a"b c`}, {"a", `back\slash x`}} {
		got, err := SplitArgs(JoinArgs(args))
		if err != nil || !reflect.DeepEqual(got, args) {
			t.Errorf("JoinArgs/SplitArgs %q -> %q -> %q, %v", args, JoinArgs(args), got, err)
		}
	}
}

// The framing: JSON lines ended by \x03, the transmission by \x04, pure
// ASCII; a reader takes a request in chunks and in one piece alike.
func TestFraming(t *testing.T) {
	var buf bytes.Buffer
	m := &Message{Data: []Item{TextItem(TypeCommand, "echo héllo 🙂"), TextItem(TypeToken, "t")}}
	if err := WriteTransmission(&buf, m); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	if b[len(b)-2] != LineEnd || b[len(b)-1] != AllEnd || bytes.Count(b, []byte{LineEnd}) != 1 {
		t.Fatalf("framing: %q", b)
	}
	for _, c := range b {
		if c >= 0x80 {
			t.Fatalf("non-ASCII byte in %q", b)
		}
	}
	req, err := ReadRequest(bytes.NewReader(b), 1<<20)
	if err != nil || req.Data[0].Text() != "echo héllo 🙂" || req.Data[1].Text() != "t" {
		t.Fatalf("%+v %v", req, err)
	}
	// Two lines in one reply.
	buf.Reset()
	WriteTransmission(&buf, &Message{Data: []Item{TextItem(TypeString, "a")}}, &Message{Data: []Item{TableItem([]string{"x"}, [][]string{{"1"}})}})
	msgs, err := ReadReply(&buf, 1<<20)
	if err != nil || len(msgs) != 2 || msgs[1].Data[0].Cells()[0][0] != "X" {
		t.Fatalf("%+v %v", msgs, err)
	}
	for _, bad := range []string{"", "{}\x04", `{"data": [{"type": "nope", "data": "x"}]}` + "\x04", `{"data": [{"type": "string", "data": 1}]}` + "\x04",
		`{"data": [{"type": "dict", "data": "x"}]}` + "\x04", `{"data": []} junk` + "\x04", "\xff\x04"} {
		if _, err := ReadRequest(strings.NewReader(bad), 1<<20); err == nil {
			t.Errorf("request %q accepted", bad)
		}
	}
	if _, err := ReadRequest(strings.NewReader(strings.Repeat("x", 2000)+"\x04"), 1000); err == nil || !strings.Contains(err.Error(), "larger than 1000") {
		t.Errorf("oversized request: %v", err)
	}
}

func serve(t *testing.T, s *Server) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(lis)
	t.Cleanup(func() { s.Close() })
	return lis.Addr().String()
}

func testCommands() []Command {
	return []Command{
		{Scope: "training", Name: "hello", Desc: "say hello", Usage: "hello NAME", Visible: true, Handler: func(c *Conn) {
			c.String("hello %s from %s", strings.Join(c.Args[1:], " "), c.User)
			c.Success("")
		}},
		{Scope: "a", Name: "dup", Handler: func(c *Conn) {}},
		{Scope: "b", Name: "dup", Handler: func(c *Conn) {}},
	}
}

func TestPasswordLoginAndCommands(t *testing.T) {
	h, _ := HashPassword("admin")
	var log bytes.Buffer
	s := &Server{Commands: testCommands(), Users: map[string]string{"admin": h}, MaxRequest: 4096,
		Logf: func(f string, a ...any) { log.WriteString(strings.TrimSpace(strings.ReplaceAll(f, "%", "")) + "\n") }}
	cl := &Client{Addr: serve(t, s), Timeout: 10 * time.Second}
	if err := cl.Login("admin", "wrong"); err != ErrRejected {
		t.Fatalf("wrong password: %v", err)
	}
	r, err := cl.Do("hello x")
	if err != nil || r.Err() == nil || !strings.Contains(r.Err().Error(), "not authenticated - no token") {
		t.Fatalf("command without login: %+v %v", r, err)
	}
	cl.Token = "forged"
	if r, _ := cl.Do("hello x"); r.Err() == nil || !strings.Contains(r.Err().Error(), "no user") {
		t.Fatalf("forged token: %+v", r)
	}
	if err := cl.Login("admin", "admin"); err != nil || cl.Token == "" {
		t.Fatalf("login: %v", err)
	}
	for cmd, want := range map[string]string{"hello big world": "hello big world from admin", "training.hello x": "hello x from admin"} {
		r, err := cl.Do(cmd)
		if err != nil || r.Err() != nil || r.Strings()[0] != want {
			t.Fatalf("%s: %+v %v", cmd, r, err)
		}
	}
	for cmd, want := range map[string]string{"nope": `Unknown command "nope"`, "dup": "multiple scopes", `bad "quote`: "syntax error"} {
		if r, _ := cl.Do(cmd); r.Err() == nil || !strings.Contains(r.Err().Error(), want) {
			t.Fatalf("%s: %+v, want %q", cmd, r, want)
		}
	}
	r, _ = cl.Do("_commands")
	rows := r.Items[0].Cells()
	if len(rows) != 2 || !reflect.DeepEqual(rows[0], []string{"SCOPE", "COMMAND", "DESCRIPTION", "USAGE", "CONFIRM"}) || rows[1][1] != "hello" {
		t.Fatalf("_commands: %q", rows)
	}
	// An oversized request gets an error; the server goes on.
	if r, err := cl.Do("hello " + strings.Repeat("x", 5000)); err != nil || r.Err() == nil || !strings.Contains(r.Err().Error(), "larger than") {
		t.Fatalf("oversized: %+v %v", r, err)
	}
	if r, _ := cl.Do("hello again"); r.Err() != nil {
		t.Fatalf("after an oversized request: %v", r.Err())
	}
	cl.Do("_logout")
	if r, _ := cl.Do("hello x"); r.Err() == nil {
		t.Fatal("token still valid after _logout")
	}
	if strings.Contains(log.String(), "wrong") || !strings.Contains(log.String(), "admin") {
		t.Fatalf("audit log (must not hold the password):\n%s", log.String())
	}
}

func TestCertificateLogin(t *testing.T) {
	ca := testpki.NewCA(t)
	dir := t.TempDir()
	ca.Issue(t, "server", dir+"/s.crt", dir+"/s.key")
	ca.Issue(t, "admin@example.org", dir+"/a.crt", dir+"/a.key")
	other := testpki.NewCA(t)
	other.Issue(t, "admin@example.org", dir+"/r.crt", dir+"/r.key")
	srvCert, _ := tls.LoadX509KeyPair(dir+"/s.crt", dir+"/s.key")
	s := &Server{Commands: testCommands(), TLS: &tls.Config{Certificates: []tls.Certificate{srvCert}, ClientCAs: ca.Pool(),
		ClientAuth: tls.RequireAndVerifyClientCert}}
	addr := serve(t, s)
	client := func(crt, key string) *Client {
		c, _ := tls.LoadX509KeyPair(crt, key)
		return &Client{Addr: addr, Timeout: 10 * time.Second, TLS: &tls.Config{Certificates: []tls.Certificate{c}, RootCAs: ca.Pool(), ServerName: "localhost"}}
	}
	cl := client(dir+"/a.crt", dir+"/a.key")
	if err := cl.CertLogin("someone@else"); err != ErrRejected {
		t.Fatalf("login under another name: %v", err)
	}
	if err := cl.CertLogin("admin@example.org"); err != nil {
		t.Fatal(err)
	}
	if r, err := cl.Do("hello"); err != nil || r.Strings()[0] != "hello  from admin@example.org" {
		t.Fatalf("%+v %v", r, err)
	}
	// The password login is not open without users, and a certificate from
	// another CA does not get through the handshake.
	if err := cl.Login("admin", "admin"); err != ErrRejected {
		t.Fatalf("password login on a certificate console: %v", err)
	}
	if err := client(dir+"/r.crt", dir+"/r.key").CertLogin("admin@example.org"); err == nil {
		t.Fatal("a certificate from a foreign CA logged in")
	}
}

// A reply that fails to read while the request is still being written
// used to be reported as the write's error, which the client's own Close
// causes ("use of closed network connection"): the read's reason is kept.
func TestClientKeepsReplyErrorOverWriteError(t *testing.T) {
	for _, tc := range []struct {
		name, reply, want string
		is                error
	}{
		{"too large", strings.Repeat("x", 8<<10), "larger than 1024 bytes", ErrTooLarge},
		{"not JSON", "not json\x03\x04", "reply line 1", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer lis.Close()
			release := make(chan struct{})
			defer close(release)
			go func() {
				nc, err := lis.Accept()
				if err != nil {
					return
				}
				defer nc.Close()
				nc.Write([]byte(tc.reply)) // and never read the request
				<-release
			}()
			c := &Client{Addr: lis.Addr().String(), MaxReply: 1024, Timeout: 10 * time.Second}
			_, err = c.Do("big " + strings.Repeat("A", 16<<20))
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "closed network connection") ||
				(tc.is != nil && !errors.Is(err, tc.is)) {
				t.Fatalf("got %v, want the reply's error %q", err, tc.want)
			}
		})
	}
}

// The audit log's summary of a command keeps its arguments apart and on
// one line: spaced, quoted or escaped arguments are quoted, long ones
// (uploaded data) cut to 80 bytes with their length.
func TestAuditSummaryQuotedAndCut(t *testing.T) {
	got := summary([]string{"set_run_number", "7", "a b", "x\nforged", `q"`, "", strings.Repeat("B", 1<<20)})
	want := `set_run_number 7 "a b" "x\nforged" "q\"" "" "` + strings.Repeat("B", 80-2-len(`...(1048576 bytes)`)) + `...(1048576 bytes)"`
	if got != want {
		t.Fatalf("summary:\n got %q\nwant %q", got, want)
	}
}
