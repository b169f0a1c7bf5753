package flare

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/flarego/flarego/proto/admin"
)

// Admin channel topics of NVFlare 2.0 (server → client requests; replies
// are "reply_" + topic).
const (
	TopicSetRunNumber = "train.set_run_number"
	TopicDeploy       = "train.deploy"
	TopicStart        = "train.start"
	TopicAbort        = "train.abort"
	TopicCheckStatus  = "train.check_status"
	TopicShutdown     = "train.shutdown"
	TopicSysInfo      = "sys.info"
	TopicAux          = "__aux_command__"
)

// maxAppBytes bounds a deployed app (configs and encrypted model code).
const maxAppBytes = 256 << 20

// ZipApp packs an app folder (config/, custom/) as NVFlare deploys it.
func ZipApp(dir string) ([]byte, error) {
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		w, err := zw.Create(filepath.ToSlash(rel))
		if err != nil {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(w, f)
		return err
	})
	if err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// UnzipApp unpacks a deployed app into dir, refusing absolute paths, "..",
// links and more than maxAppBytes.
func UnzipApp(data []byte, dir string) error {
	zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		return fmt.Errorf("deployed app: %w", err)
	}
	var total int64
	for _, f := range zr.File {
		name := filepath.FromSlash(f.Name)
		if filepath.IsAbs(name) || strings.HasPrefix(filepath.Clean(name), "..") || !filepath.IsLocal(name) {
			return fmt.Errorf("deployed app: entry %q leaves the app folder", f.Name)
		}
		if f.FileInfo().IsDir() {
			continue
		}
		if !f.Mode().IsRegular() {
			return fmt.Errorf("deployed app: entry %q is not a regular file", f.Name)
		}
		total += int64(f.UncompressedSize64)
		if total > maxAppBytes {
			return fmt.Errorf("deployed app: larger than %d bytes", maxAppBytes)
		}
		dst := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		rc, err := f.Open()
		if err != nil {
			return err
		}
		out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
		if err != nil {
			rc.Close()
			return err
		}
		_, err = io.Copy(out, io.LimitReader(rc, int64(f.UncompressedSize64)+1))
		rc.Close()
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// PlaintextCode lists the files under an app's custom/ that are not
// Fernet tokens: model code anyone who sees the app can read.
func PlaintextCode(dir string) []string {
	var plain []string
	filepath.WalkDir(filepath.Join(dir, "custom"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return nil
		}
		head := make([]byte, 6)
		n, _ := io.ReadFull(f, head)
		f.Close()
		if n == 0 || strings.HasPrefix(d.Name(), "__init__") {
			return nil
		}
		if string(head[:n]) != "gAAAAA" {
			rel, _ := filepath.Rel(dir, p)
			plain = append(plain, rel)
		}
		return nil
	})
	return plain
}

// adminQueue holds, per client, the requests Retrieve hands out: a new
// client is told the run number, gets the app, and is told to start.
type adminQueue struct {
	mu      sync.Mutex
	app     []byte
	appName string
	pending map[string][]*admin.Message
	seen    map[string]bool
}

func (q *adminQueue) forClient(token string) []*admin.Message {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.app == nil {
		return nil
	}
	if !q.seen[token] {
		q.seen[token] = true
		h := func(extra ...string) map[string]string {
			m := map[string]string{"run_number": "1", "_userName": "flarego"}
			for i := 0; i+1 < len(extra); i += 2 {
				m[extra[i]] = extra[i+1]
			}
			return m
		}
		q.pending[token] = append(q.pending[token],
			&admin.Message{Id: newUUID(), Topic: TopicSetRunNumber, BodyType: "str", Headers: h()},
			&admin.Message{Id: newUUID(), Topic: TopicDeploy, BodyType: "bytes", Body: q.app, Headers: h("app_name", q.appName)},
			&admin.Message{Id: newUUID(), Topic: TopicStart, BodyType: "str", Headers: h()})
	}
	msgs := q.pending[token]
	delete(q.pending, token)
	return msgs
}

// ServeAppTo makes the server deploy the app folder dir to every client
// that polls its admin channel, and start it there, as NVFlare's admin
// deploy_app and start_app do.
func (s *Server) ServeAppTo(dir, name string) error {
	app, err := ZipApp(dir)
	if err != nil {
		return err
	}
	if plain := PlaintextCode(dir); len(plain) > 0 {
		s.logf("warning: app %s sends model code in plaintext to every client: %s (encrypt it: flarego encrypt FILE KEY FILE.enc)", name, strings.Join(plain, ", "))
	}
	s.admin.mu.Lock()
	defer s.admin.mu.Unlock()
	s.admin.app, s.admin.appName = app, name
	s.admin.pending = map[string][]*admin.Message{}
	s.admin.seen = map[string]bool{}
	return nil
}

// AdminHandler runs the client side of the admin channel: it is given the
// deployed app's folder and starts the FL work there.
type AdminHandler struct {
	// Workspace is where deployed apps are unpacked (WORKSPACE/run_N/app_NAME).
	Workspace string
	// Start builds the executors for the deployed app in dir.
	Start func(dir string) (map[string]Executor, error)
}

// RunAdmin works like NVFlare 2.0's client: it registers, polls the admin
// channel about once a second, accepts the run number, the app and the
// start request, then runs the tasks until the run ends or the server says
// shutdown.
func (c *Client) RunAdmin(ctx context.Context, h AdminHandler) error {
	if err := c.connect(); err != nil {
		return err
	}
	defer c.conn.Close()
	ac := admin.NewAdminCommunicatingClient(c.conn)
	if err := c.register(ctx); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st := &adminState{run: "1", workDone: make(chan error, 1)}
	for {
		var msgs *admin.Messages
		err := c.retry(ctx, "admin poll", func() error {
			var err error
			msgs, err = ac.Retrieve(ctx, &admin.Client{ClientName: c.token})
			return err
		})
		if err != nil {
			return err
		}
		for _, m := range msgs.GetMessage() {
			bodyType, body, stop, err := c.handleAdmin(ctx, m, st, h)
			if err != nil {
				c.logf("client %s: admin %s: %v", c.Name, m.Topic, err)
				bodyType, body = "str", []byte("ERROR: "+err.Error())
			}
			ac.SendReply(ctx, &admin.Reply{ClientName: c.token, Message: &admin.Message{Id: newUUID(), Topic: "reply_" + m.Topic,
				BodyType: bodyType, Body: body, Headers: map[string]string{"_refMsgId": m.Id}}})
			if stop {
				return nil
			}
		}
		select {
		case err := <-st.workDone:
			if st.aborted {
				st.aborted, st.started = false, false
				continue
			}
			return err
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// adminState is what the admin channel has set up so far.
type adminState struct {
	run, appDir string
	started     bool
	aborted     bool
	stopWork    context.CancelFunc
	workDone    chan error
}

func (c *Client) handleAdmin(ctx context.Context, m *admin.Message, st *adminState, h AdminHandler) (string, []byte, bool, error) {
	run, appDir, started := &st.run, &st.appDir, &st.started
	switch m.Topic {
	case TopicSetRunNumber:
		if r := m.Headers["run_number"]; r != "" {
			*run = r
		}
		return "str", []byte("OK"), false, nil
	case TopicDeploy:
		name := m.Headers["app_name"]
		if name == "" || strings.ContainsAny(name, `/\`) || name == ".." {
			return "", nil, false, fmt.Errorf("bad app name %q", name)
		}
		dir := filepath.Join(h.Workspace, "run_"+*run, "app_"+c.Name)
		if err := os.RemoveAll(dir); err != nil {
			return "", nil, false, err
		}
		if err := UnzipApp(m.Body, dir); err != nil {
			return "", nil, false, err
		}
		*appDir = dir
		c.logf("client %s: deployed app %s to %s", c.Name, name, dir)
		return "str", []byte("OK"), false, nil
	case TopicStart:
		if *appDir == "" {
			return "", nil, false, errors.New("no app deployed")
		}
		if *started {
			return "str", []byte("Client app already started"), false, nil
		}
		tasks, err := h.Start(*appDir)
		if err != nil {
			return "", nil, false, err
		}
		c.Tasks = tasks
		*started = true
		workCtx, stop := context.WithCancel(ctx)
		st.stopWork = stop
		go func() { st.workDone <- c.work(workCtx) }()
		return "str", []byte("Start the client app..."), false, nil
	case TopicCheckStatus:
		// NVFlare's server reads a JSON object (ClientStatusKey).
		status := "not started"
		if *started {
			status = "started"
		}
		app := ""
		if *appDir != "" {
			app = strings.TrimPrefix(filepath.Base(*appDir), "app_")
		}
		b, err := json.Marshal(map[string]string{"app_name": app, "run_number": *run, "status": status})
		return "str", b, false, err
	case TopicAbort:
		// Stop the app; the client stays, ready for the next deploy/start.
		if st.stopWork != nil && *started {
			st.aborted = true
			st.stopWork()
		}
		return "str", []byte("Abort signal has been sent to the client App."), false, nil
	case TopicShutdown:
		if st.stopWork != nil {
			st.stopWork()
		}
		return "str", []byte("Shutdown the client..."), true, nil
	case TopicSysInfo:
		b, err := json.Marshal(sysInfo())
		return "str", b, false, err
	case TopicAux:
		reply := NewShareable()
		reply.SetHeader(HeaderRC, RCOK)
		if _, err := DecodeShareable(m.Body); err != nil {
			reply.SetHeader(HeaderRC, RCBadTaskData)
		}
		b, err := EncodeShareable(reply)
		return "bytes", b, false, err
	}
	return "str", []byte("unknown topic " + m.Topic), false, nil
}

// sysInfo is what NVFlare's sys.info reply holds (psutil.virtual_memory()),
// read from /proc/meminfo; missing values are left out.
func sysInfo() map[string]any {
	info := map[string]any{}
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return info
	}
	kb := map[string]int64{}
	for _, line := range strings.Split(string(data), "\n") {
		var name string
		var v int64
		if n, _ := fmt.Sscanf(strings.Replace(line, ":", " ", 1), "%s %d", &name, &v); n == 2 {
			kb[name] = v * 1024
		}
	}
	total, avail := kb["MemTotal"], kb["MemAvailable"]
	info["total"], info["available"], info["free"] = total, avail, kb["MemFree"]
	info["used"] = total - kb["MemFree"] - kb["Buffers"] - kb["Cached"]
	if total > 0 {
		info["percent"] = float64(int(1000*float64(total-avail)/float64(total))) / 10
	}
	return info
}
