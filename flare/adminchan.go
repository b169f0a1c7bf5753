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
	"strconv"
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
	TopicAbortTask    = "train.abort_task"
	TopicDeleteRun    = "train.delete_run"
	TopicAux          = "__aux_command__"
)

// maxAppBytes bounds a deployed app (configs and encrypted model code).
const maxAppBytes = 256 << 20

// ZipApp packs an app folder (config/, custom/) as NVFlare deploys it.
func ZipApp(dir string) ([]byte, error) { return ZipFolder(dir, "") }

// ZipFolder packs the files under dir with paths relative to it, under
// prefix/ if prefix is set (as NVFlare's console uploads an app).
func ZipFolder(dir, prefix string) ([]byte, error) {
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if prefix != "" {
			rel = filepath.Join(prefix, rel)
		}
		if !d.Type().IsRegular() {
			return fmt.Errorf("%s: not a regular file", p)
		}
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

// adminQueue holds, per client token, the requests Retrieve hands out,
// and the waiters for their replies.
type adminQueue struct {
	mu      sync.Mutex
	pending map[string][]*admin.Message
	waiters map[string]chan *admin.Message // token + "/" + message id
	polled  map[string]bool                // tokens that poll the channel
	sent    map[string]bool                // token + "/" + topic delivered
	// A one-job server deploys and starts its app on every new client.
	app     []byte
	appName string
	served  map[string]bool
}

func (q *adminQueue) init() {
	if q.pending == nil {
		q.pending, q.waiters = map[string][]*admin.Message{}, map[string]chan *admin.Message{}
		q.polled, q.sent, q.served = map[string]bool{}, map[string]bool{}, map[string]bool{}
	}
}

// newAdminMessage is a server → client request as NVFlare's admin sends it.
func newAdminMessage(topic, run string, body []byte, headers ...string) *admin.Message {
	h := map[string]string{"run_number": run, "_userName": "flarego"}
	for i := 0; i+1 < len(headers); i += 2 {
		h[headers[i]] = headers[i+1]
	}
	m := &admin.Message{Id: newUUID(), Topic: topic, BodyType: "str", Headers: h}
	if body != nil {
		m.BodyType, m.Body = "bytes", body
	}
	return m
}

func (q *adminQueue) forClient(token, run string) []*admin.Message {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.init()
	q.polled[token] = true
	if q.app != nil && !q.served[token] {
		q.served[token] = true
		q.pending[token] = append(q.pending[token],
			newAdminMessage(TopicSetRunNumber, run, nil),
			newAdminMessage(TopicDeploy, run, q.app, "app_name", q.appName),
			newAdminMessage(TopicStart, run, nil))
	}
	msgs := q.pending[token]
	delete(q.pending, token)
	for _, m := range msgs {
		q.sent[token+"/"+m.Topic] = true
	}
	return msgs
}

// send queues m for each token; each returned channel gets its reply.
func (q *adminQueue) send(tokens []string, m *admin.Message) map[string]chan *admin.Message {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.init()
	out := map[string]chan *admin.Message{}
	for _, tok := range tokens {
		ch := make(chan *admin.Message, 1)
		q.waiters[tok+"/"+m.Id] = ch
		q.pending[tok] = append(q.pending[tok], m)
		delete(q.sent, tok+"/"+m.Topic)
		out[tok] = ch
	}
	return out
}

// cancel forgets the requests and waiters of a finished send.
func (q *adminQueue) cancel(tokens []string, m *admin.Message) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, tok := range tokens {
		delete(q.waiters, tok+"/"+m.Id)
		msgs := q.pending[tok][:0]
		for _, p := range q.pending[tok] {
			if p != m {
				msgs = append(msgs, p)
			}
		}
		q.pending[tok] = msgs
	}
}

func (q *adminQueue) reply(token string, m *admin.Message) {
	q.mu.Lock()
	defer q.mu.Unlock()
	key := token + "/" + m.Headers["_refMsgId"]
	if ch, ok := q.waiters[key]; ok {
		delete(q.waiters, key)
		ch <- m
	}
}

// shutdownPolled queues a shutdown for every client that polls the
// channel (a one-job server's clients, when the job is done).
func (q *adminQueue) shutdownPolled(run string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.init()
	for tok := range q.polled {
		q.pending[tok] = append(q.pending[tok], newAdminMessage(TopicShutdown, run, nil))
	}
}

// delivered says whether the client polls the admin channel, and if it
// fetched a request of this topic.
func (q *adminQueue) delivered(token, topic string) (polls, fetched bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.polled[token], q.sent[token+"/"+topic]
}

// ServeAppTo makes a one-job server deploy the app folder dir to every
// client that polls its admin channel, and start it there, as NVFlare's
// admin deploy_app and start_app do; when the job is done those clients
// are told to shut down.
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
	s.admin.init()
	s.admin.app, s.admin.appName = app, name
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
// start request, and runs the tasks until the run ends; then it waits for
// the next app, until the server says shutdown.
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
			msgs, err = ac.Retrieve(ctx, &admin.Client{ClientName: c.currentToken()})
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
			ac.SendReply(ctx, &admin.Reply{ClientName: c.currentToken(), Message: &admin.Message{Id: newUUID(), Topic: "reply_" + m.Topic,
				BodyType: bodyType, Body: body, Headers: map[string]string{"_refMsgId": m.Id}}})
			if stop {
				return nil
			}
		}
		select {
		case err := <-st.workDone:
			// Like NVFlare's client, stay for the next deploy and start
			// until the server says shutdown.
			st.started, st.ran = false, true
			switch {
			case st.aborted:
				st.aborted = false
				c.logf("client %s: app aborted", c.Name)
			case err != nil:
				st.lastErr = err
				c.logf("client %s: run %s failed: %v", c.Name, st.run, err)
			default:
				c.logf("client %s: run %s done; waiting for the next app", c.Name, st.run)
			}
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
	lastErr     error
	ran         bool // a run has ended since the last start
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
		if err := os.WriteFile(filepath.Join(filepath.Dir(dir), "fl_app.txt"), []byte(name), 0o600); err != nil {
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
		*started, st.lastErr, st.ran = true, nil, false
		workCtx, stop := context.WithCancel(ctx)
		st.stopWork = stop
		go func() { st.workDone <- c.work(workCtx) }()
		return "str", []byte("Start the client app..."), false, nil
	case TopicCheckStatus:
		// NVFlare's server reads a JSON object (ClientStatusKey).
		// NVFlare's client status words; the app is the run's fl_app.txt.
		status := "not started"
		switch {
		case *started:
			status = "started"
		case st.lastErr != nil:
			status = "exception"
		case st.ran:
			status = "stopped"
		}
		app := "?"
		if b, err := os.ReadFile(filepath.Join(h.Workspace, "run_"+*run, "fl_app.txt")); err == nil {
			app = strings.TrimSpace(string(b))
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
	case TopicAbortTask:
		if !*started || !c.abortTask() {
			return "str", []byte("No task is running."), false, nil
		}
		return "str", []byte("OK"), false, nil
	case TopicDeleteRun:
		n, err := strconv.Atoi(m.Headers["run_number"])
		if err != nil || n <= 0 {
			return "", nil, false, fmt.Errorf("bad run number %q", m.Headers["run_number"])
		}
		num := strconv.Itoa(n)
		if *started && num == *run {
			return "str", []byte("Current running run_number can not be deleted."), false, nil
		}
		if err := os.RemoveAll(filepath.Join(h.Workspace, "run_"+num)); err != nil {
			return "", nil, false, err
		}
		if num == *run {
			*appDir = ""
		}
		return "str", []byte("OK"), false, nil
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
