package server

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/client"
	"github.com/flarego/flarego/flare/hci"
	"github.com/flarego/flarego/flare/internal/flaretest"
	"github.com/flarego/flarego/flare/wire20"
)

// consoleOn serves an admin server on addr and its console on a loopback
// port, as startConsole does; apps it starts save into p.
func consoleOn(t *testing.T, addr string, p *flaretest.MemPersistor) (*Server, *hci.Client, func()) {
	t.Helper()
	srv := NewAdmin()
	srv.Logf, srv.Wire = t.Logf, wire20.ServerWire{}
	build := func(dir string) (*flare.ServerConfig, *flare.Registry, error) {
		return flaretest.ServerConfig(1, 1, 0), &flare.Registry{Persistors: map[string]func(json.RawMessage) (flare.ModelPersistor, error){
			"test.MemPersistor": func(json.RawMessage) (flare.ModelPersistor, error) { return p, nil }}}, nil
	}
	h, _ := hci.HashPassword("admin")
	console := srv.Console(t.TempDir(), build)
	console.Users = map[string]string{"admin": h}
	var lis net.Listener
	var err error
	for i := 0; i < 50; i++ { // the port is free once the last server has let go
		if lis, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if lis == nil {
		t.Fatal(err)
	}
	alis := flaretest.Listen(t)
	go console.Serve(alis)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), lis) }()
	cl := &hci.Client{Addr: alis.Addr().String(), Timeout: 30 * time.Second}
	if err := cl.Login("admin", "admin"); err != nil {
		t.Fatal(err)
	}
	stop := func() {
		console.Close()
		srv.Stop()
		<-done
	}
	t.Cleanup(func() { console.Close(); srv.Stop() })
	return srv, cl, stop
}

// runApp runs one app on the server of cl as an operator would, and
// waits for it to save its model.
func runApp(t *testing.T, cl *hci.Client, p *flaretest.MemPersistor, run int) {
	t.Helper()
	do(t, cl, fmt.Sprintf("set_run_number %d", run), false, fmt.Sprintf("run_%d", run))
	do(t, cl, hci.JoinArgs([]string{"_upload_folder", "app", appZip(t, map[string]string{"app/config/config_fed_server.json": "{}", "app/config/config_fed_client.json": "{}"})}), false, "Created folder")
	do(t, cl, "deploy_app app all", false, "site-1 OK")
	do(t, cl, "start_app all", false, "Start the client app...")
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		n := p.SavedCount()
		if n == run {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("run %d did not save a model", run)
		}
	}
}

// The server restarts while a client waits between runs: the client's
// admin poll finds its token unknown, registers again and takes the next
// run (it used to exit with "unknown token").
func TestClientReRegistersFromAdminPollAfterServerRestart(t *testing.T) {
	p := &flaretest.MemPersistor{Init: flaretest.InitModel()}
	free := flaretest.Listen(t)
	addr := free.Addr().String()
	free.Close()
	first, cl, stopFirst := consoleOn(t, addr, p)
	_ = first
	logs := &flaretest.Log{T: t}
	c := &client.Client{Name: "site-1", Wire: wire20.Wire{}, Target: addr, Logf: logs.Logf, Heartbeat: time.Second}
	clientDone := make(chan error, 1)
	var mu sync.Mutex
	var started []string
	go func() {
		clientDone <- c.RunAdmin(context.Background(), client.AdminHandler{Workspace: t.TempDir(), Start: func(dir string) (map[string]flare.Executor, error) {
			mu.Lock()
			started = append(started, filepath.Base(filepath.Dir(dir)))
			mu.Unlock()
			return map[string]flare.Executor{"train": flaretest.AddExecutor{Delta: 1, Steps: 1}}, nil
		}})
	}()
	for deadline := time.Now().Add(10 * time.Second); len(first.allClients()) < 1; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the client did not register")
		}
	}
	runApp(t, cl, p, 1)
	for deadline := time.Now().Add(10 * time.Second); logs.Count("run 1 done") == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the client did not end run 1")
		}
	}
	stopFirst()

	second, cl2, _ := consoleOn(t, addr, p)
	for deadline := time.Now().Add(20 * time.Second); len(second.allClients()) < 1; time.Sleep(50 * time.Millisecond) {
		select {
		case err := <-clientDone:
			t.Fatalf("the client ended: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the client did not register with the restarted server")
		}
	}
	runApp(t, cl2, p, 2)
	do(t, cl2, "shutdown all", false, "FL app has been shutdown.")
	if err := <-clientDone; err != nil {
		t.Fatal(err)
	}
	if logs.Count("registering again") == 0 {
		t.Error("the client did not say it registers again")
	}
	if fmt.Sprint(started) != "[run_1 run_2]" {
		t.Fatalf("started %v", started)
	}
}
