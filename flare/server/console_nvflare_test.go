package server

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/client"
	"github.com/flarego/flarego/flare/hci"
	"github.com/flarego/flarego/flare/internal/flaretest"
	"github.com/flarego/flarego/flare/wire20"
)

// hciFixture is one recorded transmission of testdata/nvflare/hci.
func hciFixture(t *testing.T, dir, name string) []byte {
	t.Helper()
	return flaretest.Fixture(t, "hci", dir, name)
}

// command and token of a recorded request.
func requestParts(t *testing.T, raw []byte) (cmd, tok string) {
	t.Helper()
	m, err := hci.ReadRequest(bytes.NewReader(raw), 1<<20)
	if err != nil {
		t.Fatalf("recorded request does not parse: %v", err)
	}
	for _, it := range m.Data {
		switch it.Type {
		case hci.TypeCommand:
			cmd = it.Text()
		case hci.TypeToken:
			tok = it.Text()
		}
	}
	return cmd, tok
}

// replay sends a recorded request byte for byte (its token swapped for
// ours) and returns the reply's items.
func replay(t *testing.T, addr string, raw []byte, oldTok, newTok string) []hci.Item {
	t.Helper()
	if oldTok != "" {
		raw = bytes.ReplaceAll(raw, []byte(oldTok), []byte(newTok))
	}
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := nc.Write(raw); err != nil {
		t.Fatal(err)
	}
	msgs, err := hci.ReadReply(nc, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	var items []hci.Item
	for _, m := range msgs {
		items = append(items, m.Data...)
	}
	return items
}

// replyText flattens items for matching: strings, cells, "type:" markers.
func replyText(items []hci.Item) string {
	var b strings.Builder
	for _, it := range items {
		b.WriteString(it.Type + ": " + it.Text() + "\n")
		for _, row := range it.Cells() {
			b.WriteString(strings.Join(row, " | ") + "\n")
		}
	}
	return b.String()
}

// startAdminClients runs site-1 and site-2 on the admin channel of the
// server at addr, their train tasks run by ex; it returns their
// workspaces.
func startAdminClients(t *testing.T, srv *Server, addr string, ex flare.Executor) (chan error, []string) {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	clientDone := make(chan error, 2)
	var wss []string
	for _, name := range []string{"site-1", "site-2"} {
		c := &client.Client{Name: name, Wire: wire20.Wire{}, Target: addr, Logf: t.Logf, Heartbeat: time.Second}
		ws := t.TempDir()
		wss = append(wss, ws)
		go func() {
			clientDone <- c.RunAdmin(ctx, client.AdminHandler{Workspace: ws, Start: func(string) (map[string]flare.Executor, error) {
				return map[string]flare.Executor{"train": ex}, nil
			}})
		}()
	}
	for deadline := time.Now().Add(10 * time.Second); len(srv.allClients()) < 2; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("clients did not register")
		}
	}
	return clientDone, wss
}

// waitShutdown waits for the server and both admin-channel clients to
// end after shutdown all.
func waitShutdown(t *testing.T, done, clientDone chan error) {
	t.Helper()
	for _, ch := range []chan error{done, clientDone, clientDone} {
		select {
		case err := <-ch:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("shutdown all did not end the server and both clients")
		}
	}
}

// waitRunEnded waits for the end of a run on every side: the server app
// has stopped and no client still runs its app. The server stops first;
// a command sent then (delete_run_number, start_app, check_status client)
// would find a client still in the run.
func waitRunEnded(t *testing.T, cl *hci.Client) {
	t.Helper()
	waitStopped(t, cl)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		r, err := cl.Do("check_status client")
		if err != nil {
			t.Fatal(err)
		}
		var running []string
		for _, it := range r.Items {
			if it.Type != hci.TypeTable {
				continue
			}
			for _, row := range it.Cells()[1:] {
				if st := row[len(row)-1]; st == "started" || st == "No Reply" {
					running = append(running, row[0]+" "+st)
				}
			}
		}
		if r.Err() == nil && len(running) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the clients did not end the run: %v %v", running, r.Err())
		}
	}
}

func waitStopped(t *testing.T, cl *hci.Client) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		r, err := cl.Do("check_status server")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(strings.Join(r.Strings(), "\n"), "Engine status: stopped") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the run did not stop: %v", r.Strings())
		}
	}
}

// The requests NVFlare 2.0.5's own FLAdminAPI sent (recorded between it
// and flarego server) are served again, byte for byte: login, the
// command list, status, run number, the upload its zipfile made, deploy,
// start, shutdown.
func TestConsoleServesNVFlareAdminAPIRequests(t *testing.T) {
	p := &flaretest.MemPersistor{Init: flaretest.InitModel()}
	srv, addr, cl, done := startConsole(t, p, 0)
	clientDone, _ := startAdminClients(t, srv, addr, flaretest.AddExecutor{Delta: 1, Steps: 1})
	admin := cl.Addr
	want := []string{
		"string: REJECT",
		"string: OK",
		"training | check_status | check status of the FL server/client | check_status server|client | none",
		"CLIENT | APP_NAME | RUN_NUMBER | STATUS",
		"string: Created a new run folder: run_1",
		"string: Created folder",
		`string: deployed app "pneumonia" to Server`,
		"site-2 | Start the client app...",
		"string: FL_app name: pneumonia",
		"site-1 | pneumonia | 1 | stopped",
		"string: FL app has been shutdown.",
	}
	oldTok, tok := "", ""
	for i, w := range want {
		name := fmt.Sprintf("%02d.req", i+1)
		raw := hciFixture(t, "console-requests", name)
		cmd, rt := requestParts(t, raw)
		if rt != "" {
			oldTok = rt
		}
		items := replay(t, admin, raw, oldTok, tok)
		text := replyText(items)
		if !strings.Contains(text, w) {
			t.Fatalf("%s (%.40s): reply\n%s\nlacks %q", name, cmd, text, w)
		}
		for _, it := range items {
			if it.Type == hci.TypeToken {
				tok = it.Text()
			}
			if it.Type == hci.TypeError {
				t.Fatalf("%s (%.40s): error %s", name, cmd, it.Text())
			}
		}
		switch {
		case strings.HasPrefix(cmd, "file_transfer._upload_folder "):
			checkUnzipped(t, cmd, filepath.Join(srv.console.uploadDir(), "pneumonia"))
		case cmd == "start_app all":
			waitRunEnded(t, cl)
			if len(p.Saved) != 1 {
				t.Fatalf("the run saved %d models, want 1", len(p.Saved))
			}
		}
	}
	waitShutdown(t, done, clientDone)
}

// checkUnzipped compares the files of an upload command's zip with what
// the server unpacked into dir.
func checkUnzipped(t *testing.T, cmd, dir string) {
	t.Helper()
	args, err := hci.SplitArgs(cmd)
	if err != nil || len(args) != 3 {
		t.Fatalf("upload command: %v", err)
	}
	data, err := base64.StdEncoding.DecodeString(args[2])
	if err != nil {
		t.Fatal(err)
	}
	zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	files := 0
	for _, f := range zr.File {
		if f.FileInfo().IsDir() {
			continue
		}
		rc, _ := f.Open()
		var want bytes.Buffer
		want.ReadFrom(rc)
		rc.Close()
		rel := strings.TrimPrefix(f.Name, args[1]+"/")
		got, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(rel)))
		if err != nil || !bytes.Equal(got, want.Bytes()) {
			t.Errorf("uploaded %s: %v (%d bytes, want %d)", f.Name, err, len(got), want.Len())
		}
		files++
	}
	if files == 0 {
		t.Fatal("the recorded upload holds no files")
	}
}

// Our console answers the commands a real NVFlare 2.0.5 server answered
// (recorded with flarego admin as the console) with replies of the same
// shape: item types in order, table headers, and the fixed texts
// NVFlare's admin tools look for.
func TestConsoleRepliesShapedLikeNVFlare(t *testing.T) {
	p := &flaretest.MemPersistor{Init: flaretest.InitModel()}
	srv, addr, cl, done := startConsole(t, p, 0)
	clientDone, _ := startAdminClients(t, srv, addr, flaretest.AddExecutor{Delta: 1, Steps: 1, Delay: 300 * time.Millisecond})
	oldTok, tok := "", ""
	for i := 0; i < 15; i++ {
		raw := hciFixture(t, "server-replies", fmt.Sprintf("%02d.req", i+1))
		cmd, rt := requestParts(t, raw)
		if rt != "" {
			oldTok = rt
		}
		if cmd == "check_status server" && i == 9 {
			waitRunEnded(t, cl)
		}
		ours := replay(t, cl.Addr, raw, oldTok, tok)
		theirs, err := hci.ReadReply(bytes.NewReader(hciFixture(t, "server-replies", fmt.Sprintf("%02d.resp", i+1))), 1<<20)
		if err != nil {
			t.Fatalf("%02d: NVFlare's reply does not parse: %v", i+1, err)
		}
		for _, it := range ours {
			if it.Type == hci.TypeToken {
				tok = it.Text()
			}
		}
		if cmd == "_commands" {
			// NVFlare lists more commands than we serve; the
			// header and the rows we share must agree.
			compareCommandTables(t, ours, theirs[0].Data)
			continue
		}
		if d := shapeDiff(ours, theirs[0].Data); d != "" {
			t.Errorf("%02d %.40s: %s\nours:\n%s\nNVFlare's:\n%s", i+1, cmd, d, replyText(ours), replyText(theirs[0].Data))
		}
	}
	waitShutdown(t, done, clientDone)
}

// shapeDiff compares two replies, allowing ours the extra status lines
// (round, last failure) and warnings NVFlare 2.0 does not print; texts
// are compared by textKey, per-client responses whole.
func shapeDiff(ours, theirs []hci.Item) string {
	var o []hci.Item
	for _, it := range ours {
		if it.Type == hci.TypeString && (strings.HasPrefix(it.Text(), "Current round: ") || strings.HasPrefix(it.Text(), "Last run ended with: ") ||
			strings.HasPrefix(it.Text(), "warning: ")) {
			continue
		}
		o = append(o, it)
	}
	if len(o) != len(theirs) {
		return "different item counts"
	}
	for i := range o {
		a, b := o[i], theirs[i]
		if a.Type != b.Type {
			return "item " + a.Type + " where NVFlare has " + b.Type
		}
		switch a.Type {
		case hci.TypeTable:
			ca, cb := a.Cells(), b.Cells()
			if len(ca) == 0 || len(cb) == 0 || strings.Join(ca[0], "|") != strings.Join(cb[0], "|") || len(ca) != len(cb) {
				return "table header or row count differs"
			}
			if cb[0][0] == "CLIENT" && len(cb[0]) != 3 { // per-client replies, not tokens
				for r := 1; r < len(cb); r++ {
					if strings.Join(ca[r][1:], "|") != strings.Join(cb[r][1:], "|") && !strings.Contains(cb[r][1], "pneu") {
						return "row " + strings.Join(ca[r], "|") + " where NVFlare has " + strings.Join(cb[r], "|")
					}
				}
			}
		case hci.TypeString, hci.TypeError:
			ta, tb := a.Text(), b.Text()
			if textKey(ta) != textKey(tb) {
				return "text " + ta + " where NVFlare has " + tb
			}
		}
	}
	return ""
}

// textKey is a reply line without its variable part: up to a colon, or
// its first two words (paths differ: "Created folder DIR").
func textKey(s string) string {
	if k, _, ok := strings.Cut(s, ":"); ok {
		return k
	}
	if f := strings.Fields(s); len(f) > 2 {
		return f[0] + " " + f[1]
	}
	return s
}

func compareCommandTables(t *testing.T, ours, theirs []hci.Item) {
	t.Helper()
	if len(ours) != 1 || len(theirs) != 1 || ours[0].Type != hci.TypeTable {
		t.Fatalf("_commands: %s", replyText(ours))
	}
	theirRows := map[string][]string{}
	tc := theirs[0].Cells()
	for _, r := range tc[1:] {
		theirRows[r[0]+"."+r[1]] = r
	}
	oc := ours[0].Cells()
	if strings.Join(oc[0], "|") != strings.Join(tc[0], "|") {
		t.Errorf("_commands header %v, NVFlare's %v", oc[0], tc[0])
	}
	for _, r := range oc[1:] {
		th, ok := theirRows[r[0]+"."+r[1]]
		if !ok {
			t.Errorf("_commands: NVFlare 2.0.5 has no %s.%s", r[0], r[1])
			continue
		}
		if r[2] != th[2] || r[4] != th[4] {
			t.Errorf("_commands %s.%s: %q/%q, NVFlare's %q/%q", r[0], r[1], r[2], r[4], th[2], th[4])
		}
	}
}
