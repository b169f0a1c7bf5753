package hci

import (
	"bytes"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flarego/flarego/flare"
)

// The console runs server commands and prints their replies as NVFlare's
// tool does; upload_app zips the folder on this side (warning about
// plaintext code); wait_run polls check_status until the app stops and
// fails when the run did; malformed commands are ErrUsage; a script stops
// at bye and skips comments.
func TestConsole(t *testing.T) {
	h, _ := HashPassword("admin")
	var mu sync.Mutex
	polls := 0
	failed := false
	var uploaded string
	s := &Server{Users: map[string]string{"admin": h}, Commands: []Command{
		{Name: "check_status", Handler: func(c *Conn) {
			mu.Lock()
			defer mu.Unlock()
			polls++
			if polls < 2 {
				c.String("Engine status: started")
				c.String("Current round: 1")
				return
			}
			c.String("Engine status: stopped")
			if failed {
				c.String("Last run ended with: site-2 left")
			}
		}},
		{Name: "list", Handler: func(c *Conn) {
			c.Table([]string{"NAME", "STATE"}, [][]string{{"site-1", "ok"}})
			c.Success("listed")
		}},
		{Name: "fail", Handler: func(c *Conn) { c.Error("no such thing %s", strings.Join(c.Args[1:], " ")) }},
		{Scope: "file_transfer", Name: "_upload_folder", Handler: func(c *Conn) {
			data, err := base64.StdEncoding.DecodeString(c.Args[2])
			dir := t.TempDir()
			if err != nil || flare.UnzipApp(data, dir) != nil {
				c.Error("bad upload")
				return
			}
			b, _ := os.ReadFile(filepath.Join(dir, c.Args[1], "config", "config_fed_server.json"))
			mu.Lock()
			uploaded = c.Args[1] + ":" + string(b)
			mu.Unlock()
			c.String("Created folder %s", c.Args[1])
		}},
	}}
	cl := &Client{Addr: serve(t, s), Timeout: 10 * time.Second}
	if err := cl.Login("admin", "admin"); err != nil {
		t.Fatal(err)
	}
	up := t.TempDir()
	os.MkdirAll(filepath.Join(up, "app", "config"), 0o755)
	os.MkdirAll(filepath.Join(up, "app", "custom"), 0o755)
	os.WriteFile(filepath.Join(up, "app", "config", "config_fed_server.json"), []byte("{}"), 0o644)
	os.WriteFile(filepath.Join(up, "app", "custom", "network.py"), []byte("import torch"), 0o644)
	var out bytes.Buffer
	con := &Console{Client: cl, Out: &out, UploadDir: up, Timeout: time.Minute}

	if err := con.Run("list"); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); !strings.Contains(got, "> list\nNAME    STATE\nsite-1  ok\nlisted\nDone\n") {
		t.Errorf("list printed\n%s", got)
	}
	out.Reset()
	err := con.Run("fail big")
	if err == nil || err.Error() != "fail big: server: no such thing big" || strings.Contains(out.String(), "no such thing") {
		t.Errorf("a server error: %v, printed %q", err, out.String())
	}
	out.Reset()
	if err := con.Run("upload_app app"); err != nil {
		t.Fatal(err)
	}
	if uploaded != "app:{}" || !strings.Contains(out.String(), "holds model code in plaintext: custom/network.py") ||
		!strings.Contains(out.String(), "Created folder app") {
		t.Errorf("upload: server got %q, printed\n%s", uploaded, out.String())
	}
	for _, bad := range []string{"upload_app", `list "unterminated`, "upload_app nosuch"} {
		err := con.Run(bad)
		if usage := errors.Is(err, ErrUsage); err == nil || usage == (bad == "upload_app nosuch") {
			t.Errorf("%s: %v (usage error: %v)", bad, err, usage)
		}
	}
	out.Reset()
	if err := con.Run("wait_run"); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); got != "> wait_run\nserver app started, round 1\nserver app stopped\n" {
		t.Errorf("wait_run printed %q", got)
	}
	mu.Lock()
	failed = true
	mu.Unlock()
	if err := con.Run("wait_run"); err == nil || err.Error() != "wait_run: the run failed: site-2 left" {
		t.Errorf("a failed run: %v", err)
	}
	out.Reset()
	if err := con.RunScript(strings.NewReader("# comment\n\n  list  \nbye\nfail never\n")); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); strings.Count(got, "> ") != 1 || strings.Contains(got, "never") {
		t.Errorf("script printed\n%s", got)
	}
}
