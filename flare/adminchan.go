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
	"unicode"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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

// maxAppBytes and maxAppFiles bound a deployed app (configs and encrypted
// model code), so that a server can not fill the client's disk or inodes.
const (
	maxAppBytes = 256 << 20
	maxAppFiles = 10000
)

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
// links (so no later entry can be written through one), more than
// maxAppFiles entries and more than maxAppBytes.
func UnzipApp(data []byte, dir string) error {
	zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		return fmt.Errorf("deployed app: %w", err)
	}
	if len(zr.File) > maxAppFiles {
		return fmt.Errorf("deployed app: %d entries, more than %d", len(zr.File), maxAppFiles)
	}
	var total int64
	for _, f := range zr.File {
		name := filepath.FromSlash(f.Name)
		if filepath.IsAbs(name) || strings.HasPrefix(filepath.Clean(name), "..") || !filepath.IsLocal(name) {
			return fmt.Errorf("deployed app: entry %q leaves the app folder", logCut(f.Name))
		}
		if f.FileInfo().IsDir() {
			continue
		}
		if !f.Mode().IsRegular() {
			return fmt.Errorf("deployed app: entry %q is not a regular file", logCut(f.Name))
		}
		if f.UncompressedSize64 > maxAppBytes { // would wrap total
			return fmt.Errorf("deployed app: entry %q larger than %d bytes", logCut(f.Name), maxAppBytes)
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
		if len(msgs) == 0 {
			// A token forgotten while the request was in flight, or one
			// with nothing else queued: keep no key for it.
			delete(q.pending, tok)
			continue
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

// forget drops what the queue holds for a token the server no longer
// knows (a client dropped, logged out or registered again): without it
// every re-registration would leave its old token's entries behind.
func (q *adminQueue) forget(token string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.pending, token)
	delete(q.polled, token)
	delete(q.served, token)
	prefix := token + "/"
	for k := range q.sent {
		if strings.HasPrefix(k, prefix) {
			delete(q.sent, k)
		}
	}
	for k := range q.waiters {
		if strings.HasPrefix(k, prefix) {
			delete(q.waiters, k)
		}
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
// the next app, until the server says shutdown. A server that no longer
// knows the client (it restarted) gets a new registration.
func (c *Client) RunAdmin(ctx context.Context, h AdminHandler) error {
	if err := checkPathName("client name", c.Name); err != nil {
		return fmt.Errorf("client: %w", err)
	}
	if err := c.connect(); err != nil {
		return err
	}
	defer c.conn.Close()
	if err := c.register(ctx); err != nil {
		return c.stopped(ctx, err)
	}
	return c.stopped(ctx, c.pollAdmin(ctx, h))
}

func (c *Client) pollAdmin(ctx context.Context, h AdminHandler) error {
	ac := admin.NewAdminCommunicatingClient(c.conn)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st := &adminState{run: -1, workDone: make(chan workResult, 1)}
	for refused := 0; ; {
		var msgs *admin.Messages
		tok := c.currentToken()
		err := c.retry(ctx, "admin poll", func() error {
			var err error
			msgs, err = ac.Retrieve(ctx, &admin.Client{ClientName: tok})
			return err
		})
		if status.Code(err) == codes.Unauthenticated {
			if refused == maxReRegister {
				return fmt.Errorf("client %s: the server at %s refuses the token of each new registration: %w", c.Name, c.Target, err)
			}
			refused++
			if err := c.reRegister(ctx, tok, "the server does not know this client (restarted?)"); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		refused = 0
		for _, m := range msgs.GetMessage() {
			bodyType, body, stop, err := c.handleAdmin(ctx, m, st, h)
			if err != nil {
				c.logf("client %s: admin %s: %v", c.Name, strconv.Quote(logCut(m.Topic)), err)
				bodyType, body = "str", []byte("ERROR: "+err.Error())
			}
			_, err = ac.SendReply(ctx, &admin.Reply{ClientName: tok, Message: &admin.Message{Id: newUUID(), Topic: "reply_" + m.Topic,
				BodyType: bodyType, Body: body, Headers: map[string]string{"_refMsgId": m.Id}}})
			if err != nil && ctx.Err() == nil {
				c.logf("client %s: reply to admin %s not delivered: %s", c.Name, strconv.Quote(logCut(m.Topic)), status.Convert(err).Message())
			}
			if stop {
				return nil
			}
		}
		select {
		case r := <-st.workDone:
			// Like NVFlare's client, stay for the next deploy and start
			// until the server says shutdown.
			st.started, st.ran = false, true
			switch {
			case st.aborted:
				st.aborted = false
				c.logf("client %s: app aborted", c.Name)
			case r.err != nil:
				st.lastErr = r.err
				c.logf("client %s: run %d failed: %v", c.Name, st.runStarted, r.err)
			case r.tasks == 0:
				c.logf("client %s: run %d ended without a task for this client; waiting for the next app", c.Name, st.runStarted)
			default:
				c.logf("client %s: run %d done; waiting for the next app", c.Name, st.runStarted)
			}
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// workResult is how a started app's work ended.
type workResult struct {
	tasks int
	err   error
}

// adminState is what the admin channel has set up so far.
type adminState struct {
	run        int64 // set by set_run_number and start; -1 before
	runStarted int64 // the run of the app started last
	started    bool
	aborted    bool
	stopWork   context.CancelFunc
	workDone   chan workResult
	lastErr    error
	ran        bool // a run has ended since the last start
}

// maxRunNumberDigits keeps a run number an int64 (and its folder name short).
const maxRunNumberDigits = 18

// parseRunNumber reads a run number as the server sends it: a
// non-negative decimal integer and nothing else. It becomes a folder name
// (WORKSPACE/run_N), so "../x", "-1", "+1", " 1" or "1e3" are refused.
func parseRunNumber(s string) (int64, error) {
	if s == "" || len(s) > maxRunNumberDigits || strings.Trim(s, "0123456789") != "" {
		return 0, fmt.Errorf("run number %s is not a non-negative decimal integer of at most %d digits", strconv.Quote(logCut(s)), maxRunNumberDigits)
	}
	return strconv.ParseInt(s, 10, 64)
}

// runOf is the run number a request names in its run_number header
// (NVFlare's deploy, start and delete_run act on that run), else the one
// set last.
func runOf(m *admin.Message, st *adminState) (int64, error) {
	if r, ok := m.Headers["run_number"]; ok {
		return parseRunNumber(r)
	}
	if st.run < 0 {
		return 0, errors.New("no run number set")
	}
	return st.run, nil
}

// maxNameBytes bounds a name the server sends that becomes part of a path
// or a file (an app name).
const maxNameBytes = 255

// checkPathName accepts a name that is to be one path element: no
// separators, no "..", no control characters, not empty or overlong.
func checkPathName(what, name string) error {
	ok := name != "" && len(name) <= maxNameBytes && name != "." && name != ".." &&
		!strings.ContainsAny(name, `/\:`) && filepath.IsLocal(name) && utf8.ValidString(name)
	for _, r := range name {
		ok = ok && !unicode.IsControl(r)
	}
	if !ok {
		return fmt.Errorf("bad %s %s", what, strconv.Quote(logCut(name)))
	}
	return nil
}

// runDir is the folder of run n in the workspace.
func runDir(ws string, n int64) string {
	return filepath.Join(ws, "run_"+strconv.FormatInt(n, 10))
}

func (c *Client) handleAdmin(ctx context.Context, m *admin.Message, st *adminState, h AdminHandler) (string, []byte, bool, error) {
	switch m.Topic {
	case TopicSetRunNumber:
		n, err := parseRunNumber(m.Headers["run_number"])
		if err != nil {
			return "", nil, false, err
		}
		st.run = n
		return "str", []byte("OK"), false, nil
	case TopicDeploy:
		name := m.Headers["app_name"]
		if err := checkPathName("app name", name); err != nil {
			return "", nil, false, err
		}
		n, err := runOf(m, st)
		if err != nil {
			return "", nil, false, err
		}
		if st.started && n == st.runStarted {
			return "", nil, false, fmt.Errorf("run %d is running: its app can not be replaced", n)
		}
		dir := filepath.Join(runDir(h.Workspace, n), "app_"+c.Name)
		if err := os.RemoveAll(dir); err != nil {
			return "", nil, false, err
		}
		if err := UnzipApp(m.Body, dir); err != nil {
			return "", nil, false, err
		}
		if err := os.WriteFile(filepath.Join(filepath.Dir(dir), "fl_app.txt"), []byte(name), 0o600); err != nil {
			return "", nil, false, err
		}
		c.logf("client %s: deployed app %s to %s", c.Name, name, dir)
		return "str", []byte("OK"), false, nil
	case TopicStart:
		if st.started {
			return "str", []byte("Client app already started"), false, nil
		}
		n, err := runOf(m, st)
		if err != nil {
			return "", nil, false, err
		}
		dir := filepath.Join(runDir(h.Workspace, n), "app_"+c.Name)
		if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
			return "", nil, false, fmt.Errorf("no app deployed for run %d", n)
		}
		tasks, err := h.Start(dir)
		if err != nil {
			return "", nil, false, err
		}
		c.Tasks = tasks
		// NVFlare's client runs the app in the run the start names, and
		// its server refuses task requests from any other run.
		st.run, st.runStarted = n, n
		c.setRun(n)
		st.started, st.lastErr, st.ran = true, nil, false
		workCtx, stop := context.WithCancel(ctx)
		st.stopWork = stop
		go func() {
			tasks, err := c.workTasks(workCtx)
			st.workDone <- workResult{tasks, err}
		}()
		c.logf("client %s: started run %d", c.Name, n)
		return "str", []byte("Start the client app..."), false, nil
	case TopicCheckStatus:
		// NVFlare's server reads a JSON object (ClientStatusKey).
		// NVFlare's client status words; the app is the run's fl_app.txt.
		status := "not started"
		switch {
		case st.started:
			status = "started"
		case st.lastErr != nil:
			status = "exception"
		case st.ran:
			status = "stopped"
		}
		app, run := "?", "?"
		if st.run >= 0 {
			run = strconv.FormatInt(st.run, 10)
			if b, err := os.ReadFile(filepath.Join(runDir(h.Workspace, st.run), "fl_app.txt")); err == nil {
				app = strings.TrimSpace(string(b))
			}
		}
		b, err := json.Marshal(map[string]string{"app_name": app, "run_number": run, "status": status})
		return "str", b, false, err
	case TopicAbort:
		// Stop the app; the client stays, ready for the next deploy/start.
		if st.stopWork != nil && st.started {
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
		if !st.started || !c.abortTask() {
			return "str", []byte("No task is running."), false, nil
		}
		return "str", []byte("OK"), false, nil
	case TopicDeleteRun:
		n, err := parseRunNumber(m.Headers["run_number"])
		if err != nil {
			return "", nil, false, err
		}
		if st.started && n == st.runStarted {
			return "str", []byte("Current running run_number can not be deleted."), false, nil
		}
		if err := os.RemoveAll(runDir(h.Workspace, n)); err != nil {
			return "", nil, false, err
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
	return "str", []byte("unknown topic " + strconv.Quote(logCut(m.Topic))), false, nil
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
