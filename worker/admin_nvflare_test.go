package main

import (
	"archive/zip"
	"bytes"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/flarego/flarego/flare/hci"
)

// recordedServer answers admin commands with the replies a real NVFlare
// 2.0.5 server gave (testdata/nvflare/hci/server-replies), in order,
// after checking that each request carries the recorded command.
type recordedServer struct {
	t    *testing.T
	dir  string
	mu   sync.Mutex
	next int
	n    int
	errs []string
	// upload is the data of the upload command we received.
	upload []byte
}

func (s *recordedServer) serve(lis net.Listener) {
	for {
		nc, err := lis.Accept()
		if err != nil {
			return
		}
		s.answer(nc)
	}
}

func (s *recordedServer) fail(format string, a ...any) {
	s.errs = append(s.errs, fmt.Sprintf(format, a...))
}

func (s *recordedServer) answer(nc net.Conn) {
	defer nc.Close()
	req, err := hci.ReadRequest(nc, 1<<20)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.fail("request %d: %v", s.next+1, err)
		return
	}
	if s.next >= s.n {
		return // the real server had gone: no reply
	}
	s.next++
	name := filepath.Join(s.dir, fmt.Sprintf("%02d", s.next))
	rec, err := os.ReadFile(name + ".req")
	if err != nil {
		s.fail("%v", err)
		return
	}
	want, err := hci.ReadRequest(bytes.NewReader(rec), 1<<20)
	if err != nil {
		s.fail("recorded %s.req: %v", name, err)
		return
	}
	got, exp := req.Data[0].Text(), want.Data[0].Text()
	if ga, ea := strings.Fields(got), strings.Fields(exp); ga[0] == "file_transfer._upload_folder" && len(ga) == 3 && len(ea) == 3 && ga[1] == ea[1] {
		s.upload, _ = base64.StdEncoding.DecodeString(ga[2])
	} else if got != exp {
		s.fail("request %d: command %q, recorded %q", s.next, got, exp)
	}
	if (len(req.Data) > 1) != (len(want.Data) > 1) {
		s.fail("request %d (%s): token present %v, recorded %v", s.next, exp, len(req.Data) > 1, len(want.Data) > 1)
	}
	resp, err := os.ReadFile(name + ".resp")
	if err != nil {
		s.fail("%v", err)
		return
	}
	nc.Write(resp)
}

// flarego admin drives a recording of a real NVFlare 2.0.5 server: a
// refused login, then upload, run number, deploy, start, wait_run over
// the server's own status replies, client status, NVFlare's error for a
// missing app (ending the command list), and shutdown all.
func TestAdminDrivesRecordedNVFlareServer(t *testing.T) {
	dir := t.TempDir()
	app := filepath.Join(dir, "pneu")
	os.MkdirAll(filepath.Join(app, "config"), 0o755)
	os.WriteFile(filepath.Join(app, "config", "config_fed_server.json"), []byte(`{"format_version": 2}`), 0o644)
	td, _ := filepath.Abs(filepath.Join("..", "testdata", "nvflare", "hci", "server-replies"))
	srv := &recordedServer{t: t, dir: td, n: 15}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	go srv.serve(lis)
	_, port, _ := net.SplitHostPort(lis.Addr().String())
	pw := filepath.Join(dir, "pw")
	os.WriteFile(pw, []byte("wrong\n"), 0o600)
	admin := func(cmds ...string) (int, string) {
		args := []string{"admin", "--host", "127.0.0.1", "--port", port, "--password-file", pw, "--upload_dir", dir}
		for _, c := range cmds {
			args = append(args, "-c", c)
		}
		var out bytes.Buffer
		rc := run(args, &out, &out)
		return rc, out.String()
	}

	rc, out := admin("check_status server")
	if rc == 0 || !strings.Contains(out, "login refused") {
		t.Fatalf("wrong password: rc %d\n%s", rc, out)
	}
	os.WriteFile(pw, []byte("admin\n"), 0o600)
	rc, out = admin("check_status server", "_commands", "upload_app pneu", "set_run_number 1", "deploy_app pneu all", "start_app all",
		"wait_run", "check_status client", "deploy_app nosuchapp all", "check_status server")
	for _, want := range []string{
		"Engine status: stopped\nRun number has not been set.",
		"eval_right", "start the FL app",
		"Created folder ./transfer/pneu",
		"Created a new run folder: run_1",
		"deployed app \"pneu\" to Server",
		"site-1  Start the client app...",
		"server app started\n",
		"server app stopped\n",
		"site-2  pneu      1           stopped",
		"deploy_app nosuchapp all: server: App folder 'nosuchapp' does not exist in staging area.",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if rc == 0 || strings.Count(out, "> check_status server\n") != 1 {
		t.Errorf("the console went on after an error (rc %d)", rc)
	}
	zr, err := zip.NewReader(bytes.NewReader(srv.upload), int64(len(srv.upload)))
	if err != nil || len(zr.File) == 0 || !strings.HasPrefix(zr.File[0].Name, "pneu/") {
		t.Errorf("upload_app sent no zip of pneu/: %v", err)
	}
	rc, out2 := admin("shutdown all")
	if rc != 0 || !strings.Contains(out2, "FL app has been shutdown.") || !strings.Contains(out2, "server shut down: Bye bye") {
		t.Errorf("shutdown all: rc %d\n%s", rc, out2)
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if srv.next != srv.n {
		t.Errorf("%d of %d recorded exchanges used", srv.next, srv.n)
	}
	for _, e := range srv.errs {
		t.Error(e)
	}
	if t.Failed() {
		t.Logf("output:\n%s%s", out, out2)
	}
}

// fakeConsole serves set_run_number and fail on an hci.Server with the
// POC user and records the arguments it got.
func fakeConsole(t *testing.T) (port string, got *[]string) {
	t.Helper()
	h, _ := hci.HashPassword("admin")
	var mu sync.Mutex
	var args []string
	s := &hci.Server{Users: map[string]string{"admin": h}, Commands: []hci.Command{
		{Name: "set_run_number", Handler: func(c *hci.Conn) {
			mu.Lock()
			args = append(args, strings.Join(c.Args, " "))
			mu.Unlock()
			c.Error("run number must be > 0.")
		}},
		{Name: "fail", Handler: func(c *hci.Conn) { c.Error("no such thing %s", strings.Join(c.Args[1:], " ")) }},
	}}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(lis)
	t.Cleanup(func() { s.Close() })
	_, port, _ = net.SplitHostPort(lis.Addr().String())
	return port, &args
}

// "admin set_run_number -1" read -1 as a flag: words after the command
// are its arguments.
func TestAdminNegativeArgumentIsNotAFlag(t *testing.T) {
	port, got := fakeConsole(t)
	var out bytes.Buffer
	rc := run([]string{"admin", "--host", "127.0.0.1", "--port", port, "set_run_number", "-1"}, &out, &out)
	if rc != 1 || len(*got) != 1 || (*got)[0] != "set_run_number -1" {
		t.Fatalf("rc %d, the server got %q\n%s", rc, *got, out.String())
	}
	out.Reset()
	rc = run([]string{"admin", "--port", port, "--host", "127.0.0.1", "set_run_number", "--host", "x"}, &out, &out)
	if rc != 1 || len(*got) != 2 || (*got)[1] != "set_run_number --host x" {
		t.Fatalf("rc %d, the server got %q\n%s", rc, *got, out.String())
	}
}

// An error the server sent used to be printed twice (the reply, then the
// returned error): once, naming the command.
func TestAdminErrorPrintedOnce(t *testing.T) {
	port, _ := fakeConsole(t)
	var out bytes.Buffer
	rc := run([]string{"admin", "--host", "127.0.0.1", "--port", port, "-c", "fail big", "-c", "fail again"}, &out, &out)
	if rc != 1 || strings.Count(out.String(), "no such thing big") != 1 || strings.Contains(out.String(), "again") ||
		!strings.Contains(out.String(), "fail big") {
		t.Fatalf("rc %d:\n%s", rc, out.String())
	}
}
