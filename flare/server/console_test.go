package server

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/hci"
	"github.com/flarego/flarego/flare/internal/flaretest"
	"github.com/flarego/flarego/flare/wire20"
)

// startConsole serves an admin server and its console; apps it starts
// run testServerConfig with p as persistor.
func startConsole(t *testing.T, p *flaretest.MemPersistor, wait float64) (*Server, string, *hci.Client, chan error) {
	t.Helper()
	ws := t.TempDir()
	srv := NewAdmin()
	srv.Logf, srv.Wire = t.Logf, wire20.ServerWire{}
	build := func(dir string) (*flare.ServerConfig, *flare.Registry, error) {
		if _, err := os.Stat(filepath.Join(dir, "config", "config_fed_server.json")); err != nil {
			return nil, nil, err
		}
		return flaretest.ServerConfig(1, 1, wait), &flare.Registry{Persistors: map[string]func(json.RawMessage) (flare.ModelPersistor, error){
			"test.MemPersistor": func(json.RawMessage) (flare.ModelPersistor, error) { return p, nil }}}, nil
	}
	h, _ := hci.HashPassword("admin")
	console := srv.Console(ws, build)
	console.Users = map[string]string{"admin": h}
	lis, _ := net.Listen("tcp", "127.0.0.1:0")
	alis, _ := net.Listen("tcp", "127.0.0.1:0")
	go console.Serve(alis)
	t.Cleanup(func() { console.Close() })
	done := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel) // tests that do not shut the server down
	go func() { done <- srv.Serve(ctx, lis) }()
	cl := &hci.Client{Addr: alis.Addr().String(), Timeout: 30 * time.Second}
	if err := cl.Login("admin", "admin"); err != nil {
		t.Fatal(err)
	}
	return srv, lis.Addr().String(), cl, done
}

// do runs a console command; want is a text the reply must hold (an
// error's text if wantErr).
func do(t *testing.T, cl *hci.Client, cmd string, wantErr bool, want string) {
	t.Helper()
	r, err := cl.Do(cmd)
	if err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	var all []string
	for _, it := range r.Items {
		all = append(all, it.Text())
		for _, row := range it.Cells() {
			all = append(all, strings.Join(row, " "))
		}
	}
	text := strings.Join(all, "\n")
	if (r.Err() != nil) != wantErr || !strings.Contains(text, want) {
		t.Fatalf("%s: error %v, reply:\n%s\nwant error=%v and %q", cmd, r.Err(), text, wantErr, want)
	}
}

func appZip(t *testing.T, files map[string]string) string {
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for name, content := range files {
		w, _ := zw.Create(name)
		w.Write([]byte(content))
	}
	zw.Close()
	return base64.StdEncoding.EncodeToString(buf.Bytes())
}

func TestConsoleRefusesBadUploads(t *testing.T) {
	_, _, cl, _ := startConsole(t, &flaretest.MemPersistor{Init: flaretest.InitModel()}, 0)
	good := map[string]string{"app/config/config_fed_server.json": "{}"}
	for _, c := range []struct{ name, data, want string }{
		{"../app", appZip(t, good), "bad app name"},
		{"a/b", appZip(t, good), "bad app name"},
		{".", appZip(t, good), "bad app name"},
		{"app\nrun 1: app x finished", appZip(t, good), `bad app name "app\n`},
		{"app", "!!!", "not base64"},
		{"app", appZip(t, map[string]string{"app/../../evil": "x"}), "leaves the app folder"},
		{"app", appZip(t, map[string]string{"other/config/x.json": "{}"}), "must hold exactly the folder app"},
		{"app", appZip(t, map[string]string{"app/x": "{}", "extra/y": "1"}), "must hold exactly the folder app"},
	} {
		do(t, cl, hci.JoinArgs([]string{"_upload_folder", c.name, c.data}), true, c.want)
	}
	do(t, cl, hci.JoinArgs([]string{"file_transfer._upload_folder", "app", appZip(t, good)}), false, "Created folder")
	// An app past the login limit (16 KiB) travels from the address that
	// logged in.
	big := make([]byte, 96<<10)
	rand.Read(big)
	do(t, cl, hci.JoinArgs([]string{"_upload_folder", "big", appZip(t, map[string]string{"big/config/config_fed_server.json": "{}", "big/custom/w.bin": string(big)})}), false, "Created folder")
	do(t, cl, "set_run_number 1", false, "run_1")
	// "." used to deploy the whole staging area.
	do(t, cl, "deploy_app . server", true, "bad app name")
}

// Commands out of order get NVFlare's errors; an aborted run leaves the
// server ready for the next one, which completes.
func TestConsoleOrderAbortAndNextRun(t *testing.T) {
	p := &flaretest.MemPersistor{Init: flaretest.InitModel()}
	srv, addr, cl, done := startConsole(t, p, 0)
	do(t, cl, "check_status client", true, "no clients available")
	do(t, cl, "deploy_app app all", true, "Please set a run number.")
	do(t, cl, "start_app server", true, "Please set a run number.")
	do(t, cl, "set_run_number x", true, "must be an integer")
	do(t, cl, "set_run_number 0", true, "must be > 0")
	do(t, cl, "set_run_number 1", false, "Created a new run folder: run_1")
	do(t, cl, "deploy_app app all", true, "App folder 'app' does not exist in staging area.")
	do(t, cl, "start_app server", true, "Server app does not exist")
	do(t, cl, "abort server", true, "Server app has not started.")
	do(t, cl, "check_status bogus", true, "invalid target type bogus")
	do(t, cl, hci.JoinArgs([]string{"_upload_folder", "app", appZip(t, map[string]string{"app/config/config_fed_server.json": "{}", "app/config/config_fed_client.json": "{}"})}), false, "Created folder")

	// Two clients on the admin channel; their executor is slow, so the
	// first run can be aborted mid-round.
	clientDone, _ := startAdminClients(t, srv, addr, flaretest.AddExecutor{Delta: 1, Steps: 1, Delay: 1500 * time.Millisecond})
	do(t, cl, "start_app client", true, "Server app has not started.")
	do(t, cl, "deploy_app app all", false, `deployed app "app" to Server`)
	do(t, cl, "start_app all", false, "Start the client app...")
	do(t, cl, "start_app server", true, "Server already starting or started.")
	do(t, cl, "set_run_number 2", true, "can not be changed during the FL app running")
	do(t, cl, "deploy_app app server", true, "is running")
	do(t, cl, "abort all", false, "Abort signal has been sent to the server app.")
	waitRunEnded(t, cl)
	if len(p.Saved) != 0 {
		t.Fatalf("the aborted run saved %d models", len(p.Saved))
	}

	do(t, cl, "set_run_number 2", false, "Created a new run folder: run_2")
	do(t, cl, "deploy_app app all", false, "site-2 OK")
	do(t, cl, "start_app all", false, "Start the client app...")
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		n := p.SavedCount()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("run 2 did not save a model")
		}
	}
	do(t, cl, "check_status server", false, "Current run number: 2")
	do(t, cl, "shutdown server", true, "still active clients")
	do(t, cl, "shutdown client site-1", false, "Shutdown the client...")
	do(t, cl, "remove_client site-9", true, "invalid client(s): site-9")
	do(t, cl, "shutdown all", false, "FL app has been shutdown.")
	waitShutdown(t, done, clientDone)
}

// blockExecutor runs until its task is aborted.
type blockExecutor struct{ started chan string }

func (b blockExecutor) Execute(ctx context.Context, task string, data *flare.Shareable, fl *flare.FLContext) (*flare.Shareable, error) {
	b.started <- task
	<-ctx.Done()
	return nil, ctx.Err()
}

// abort_task stops the clients' tasks (the round then fails with a
// reason instead of waiting forever); a running run cannot be deleted,
// a finished one is deleted here and on the clients; sys_info shows
// memory facts of the server and of each client.
func TestConsoleAbortTaskDeleteRunSysInfo(t *testing.T) {
	p := &flaretest.MemPersistor{Init: flaretest.InitModel()}
	srv, addr, cl, done := startConsole(t, p, 0)
	ex := blockExecutor{started: make(chan string, 2)}
	clientDone, wss := startAdminClients(t, srv, addr, ex)
	do(t, cl, "abort_task", true, "syntax error")
	do(t, cl, "abort_task site-1", false, "site-1 No task is running.")
	do(t, cl, "set_run_number 1", false, "run_1")
	do(t, cl, hci.JoinArgs([]string{"_upload_folder", "app", appZip(t, map[string]string{"app/config/config_fed_server.json": "{}", "app/config/config_fed_client.json": "{}"})}), false, "Created folder")
	do(t, cl, "deploy_app app all", false, "site-2 OK")
	do(t, cl, "start_app all", false, "Start the client app...")
	for i := 0; i < 2; i++ {
		select {
		case <-ex.started:
		case <-time.After(10 * time.Second):
			t.Fatal("the clients did not start their tasks")
		}
	}
	do(t, cl, "delete_run_number 1", true, "Current running run_number can not be deleted.")
	do(t, cl, "abort_task site-9", true, "invalid client(s): site-9")
	do(t, cl, "abort_task site-1 site-2", false, "site-2 OK")
	waitRunEnded(t, cl)
	do(t, cl, "check_status server", false, "2 client(s) failed the task")
	if len(p.Saved) != 0 {
		t.Fatalf("a model was saved after every task was aborted")
	}
	for _, dir := range append([]string{srv.console.runDir(1)}, filepath.Join(wss[0], "run_1"), filepath.Join(wss[1], "run_1")) {
		if _, err := os.Stat(dir); err != nil {
			t.Fatalf("before delete_run_number: %v", err)
		}
	}
	do(t, cl, "delete_run_number x", true, "must be an integer")
	do(t, cl, "delete_run_number 1", false, "site-1 OK")
	for _, dir := range append([]string{srv.console.runDir(1)}, filepath.Join(wss[0], "run_1"), filepath.Join(wss[1], "run_1")) {
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("%s after delete_run_number: %v", dir, err)
		}
	}
	do(t, cl, "sys_info", true, "syntax error")
	do(t, cl, "sys_info server", false, "available_percent")
	if r, _ := cl.Do("sys_info server"); strings.Contains(replyText(r.Items), "e+") {
		t.Errorf("sys_info shows numbers in exponent form:\n%s", replyText(r.Items))
	}
	do(t, cl, "sys_info client site-2", false, "Client: site-2")
	do(t, cl, "sys_info client", false, "total")
	do(t, cl, "sys_info bogus", false, "invalid target type bogus")
	do(t, cl, "shutdown all", false, "FL app has been shutdown.")
	waitShutdown(t, done, clientDone)
}

// A scripted attack on the console from 127.0.0.1, bounded in count and
// time: 300 silent connections, 8 requests of 16 MiB before login, 8
// uploads of 4 MiB with a forged token from the admin's own address, and
// 300 wrong passwords. The logged-in admin's commands go on, a fresh
// login from another address succeeds, and the heap stays within 64 MiB
// of where it was: strangers hold at most 32 connections of at most
// 16 KiB each, and one upload at a time is read.
func TestConsoleScriptedAttack(t *testing.T) {
	_, _, cl, _ := startConsole(t, &flaretest.MemPersistor{Init: flaretest.InitModel()}, 0)
	addr := cl.Addr
	huge := append([]byte(`{"time": "t", "data": [{"type": "command", "data": "_login admin `), bytes.Repeat([]byte("A"), 16<<20)...)
	upload := []byte(`{"time": "t", "data": [{"type": "command", "data": "file_transfer._upload_folder app ` +
		strings.Repeat("B", 4<<20) + `"}, {"type": "token", "data": "forged"}]}` + "\x03\x04")
	var base runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&base)
	var peak atomic.Uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		var m runtime.MemStats
		for {
			runtime.ReadMemStats(&m)
			if m.HeapAlloc > peak.Load() {
				peak.Store(m.HeapAlloc)
			}
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()

	send := func(raw []byte) {
		nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return
		}
		defer nc.Close()
		nc.SetDeadline(time.Now().Add(15 * time.Second))
		go nc.Write(raw)
		io.Copy(io.Discard, nc)
	}
	var wg sync.WaitGroup
	var silent []net.Conn
	var silentMu sync.Mutex
	attack := func(n int, f func(i int)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var inner sync.WaitGroup
			for i := 0; i < n; i++ {
				inner.Add(1)
				go func() { defer inner.Done(); f(i) }()
				time.Sleep(2 * time.Millisecond)
			}
			inner.Wait()
		}()
	}
	attack(300, func(int) {
		if nc, err := net.DialTimeout("tcp", addr, 5*time.Second); err == nil {
			silentMu.Lock()
			silent = append(silent, nc)
			silentMu.Unlock()
		}
	})
	attack(8, func(int) { send(huge) })
	attack(8, func(int) { send(upload) })
	attack(300, func(i int) {
		send([]byte(`{"time": "t", "data": [{"type": "command", "data": "_login admin guess` + strconv.Itoa(i) + `"}]}` + "\x03\x04"))
	})

	// The admin, during the attack.
	start := time.Now()
	do(t, cl, "check_status server", false, "Engine status: stopped")
	if d := &(net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}); true {
		if nc, err := d.Dial("tcp", addr); err != nil {
			t.Logf("no second loopback address (%v): the fresh login is not tried", err)
		} else {
			nc.SetDeadline(time.Now().Add(10 * time.Second))
			hci.WriteTransmission(nc, &hci.Message{Data: []hci.Item{hci.TextItem(hci.TypeCommand, "_login admin admin")}})
			msgs, err := hci.ReadReply(nc, 1<<20)
			nc.Close()
			if err != nil || len(msgs) == 0 || !strings.Contains(replyText(msgs[0].Data), "string: OK") {
				t.Errorf("a fresh login from 127.0.0.2 during the attack: %v %v", msgs, err)
			}
		}
	}
	wg.Wait()
	do(t, cl, "check_status server", false, "Engine status: stopped")
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("the attack and the admin's commands took %v", d)
	}
	close(stop)
	<-sampled
	silentMu.Lock()
	for _, nc := range silent {
		nc.Close()
	}
	silentMu.Unlock()
	if grown := int64(peak.Load()) - int64(base.HeapAlloc); grown > 64<<20 {
		t.Errorf("the heap grew by %d MiB during the attack", grown>>20)
	} else {
		t.Logf("the heap grew by at most %.1f MiB during the attack", float64(grown)/(1<<20))
	}
	// The brute force was stopped: the right password from 127.0.0.1 is
	// refused for now.
	fresh := &hci.Client{Addr: addr, Timeout: 10 * time.Second}
	if err := fresh.Login("admin", "admin"); err == nil || !strings.Contains(err.Error(), "too many failed logins") {
		t.Errorf("login from the attacking address after 300 wrong passwords: %v", err)
	}
}
