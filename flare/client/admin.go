package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/flarego/flarego/flare"
)

// AdminHandler runs the client side of the admin channel: it is given the
// deployed app's folder and starts the FL work there.
type AdminHandler struct {
	// Workspace is where deployed apps are unpacked (WORKSPACE/run_N/app_NAME).
	Workspace string
	// Start builds the executors for the deployed app in dir.
	Start func(dir string) (map[string]flare.Executor, error)
}

// RunAdmin works like NVFlare 2.0's client: it registers, polls the admin
// channel about once a second, accepts the run number, the app and the
// start request, and runs the tasks until the run ends; then it waits for
// the next app, until the server says shutdown. A server that no longer
// knows the client (it restarted) gets a new registration.
func (c *Client) RunAdmin(ctx context.Context, h AdminHandler) error {
	// The server refuses what CheckName refuses; the name is also a folder.
	err := flare.CheckName("client name", c.Name)
	if err == nil {
		err = flare.CheckPathName("client name", c.Name)
	}
	if err != nil {
		return fmt.Errorf("client: %w", err)
	}
	if err := c.connect(); err != nil {
		return err
	}
	defer c.tr.Close()
	if err := c.register(ctx); err != nil {
		return c.stopped(ctx, err)
	}
	return c.stopped(ctx, c.pollAdmin(ctx, h))
}

func (c *Client) pollAdmin(ctx context.Context, h AdminHandler) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st := &adminState{run: -1, workDone: make(chan workResult, 1)}
	for {
		var reqs []*flare.AdminRequest
		var s flare.Session
		err := c.registered(ctx, "admin poll", func(cur flare.Session) error {
			var err error
			s = cur
			reqs, err = c.tr.Poll(ctx, s)
			return err
		})
		if err != nil {
			return err
		}
		for _, m := range reqs {
			reply, stop, err := c.handleAdmin(ctx, m, st, h)
			if err != nil {
				c.logf("client %s: admin %s: %v", c.Name, strconv.Quote(flare.LogCut(m.Topic)), err)
				reply = &flare.AdminReply{Text: []byte("ERROR: " + err.Error())}
			}
			if err := c.tr.Reply(ctx, s, m, reply); err != nil && ctx.Err() == nil {
				c.logf("client %s: reply to admin %s not delivered: %s", c.Name, strconv.Quote(flare.LogCut(m.Topic)), flare.CallReason(err))
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

// parseRunNumber reads a run number as the server sends it: a
// non-negative decimal integer and nothing else. It becomes a folder name
// (WORKSPACE/run_N), so "../x", "-1", "+1", " 1" or "1e3" are refused.
func parseRunNumber(s string) (int64, error) {
	if s == "" || len(s) > flare.MaxRunNumberDigits || strings.Trim(s, "0123456789") != "" {
		return 0, fmt.Errorf("run number %s is not a non-negative decimal integer of at most %d digits", strconv.Quote(flare.LogCut(s)), flare.MaxRunNumberDigits)
	}
	return strconv.ParseInt(s, 10, 64)
}

// runOf is the run number a request names in its run_number header
// (NVFlare's deploy, start and delete_run act on that run), else the one
// set last.
func runOf(m *flare.AdminRequest, st *adminState) (int64, error) {
	if r, ok := m.Headers["run_number"]; ok {
		return parseRunNumber(r)
	}
	if st.run < 0 {
		return 0, errors.New("no run number set")
	}
	return st.run, nil
}

// runDir is the folder of run n in the workspace.
func runDir(ws string, n int64) string {
	return filepath.Join(ws, "run_"+strconv.FormatInt(n, 10))
}

// handleAdmin answers one admin request; stop says the server shut the
// client down.
func (c *Client) handleAdmin(ctx context.Context, m *flare.AdminRequest, st *adminState, h AdminHandler) (reply *flare.AdminReply, stop bool, err error) {
	switch m.Topic {
	case flare.TopicSetRunNumber:
		n, err := parseRunNumber(m.Headers["run_number"])
		if err != nil {
			return nil, false, err
		}
		st.run = n
		return text("OK"), false, nil
	case flare.TopicDeploy:
		name := m.Headers["app_name"]
		if err := flare.CheckPathName("app name", name); err != nil {
			return nil, false, err
		}
		n, err := runOf(m, st)
		if err != nil {
			return nil, false, err
		}
		if st.started && n == st.runStarted {
			return nil, false, fmt.Errorf("run %d is running: its app can not be replaced", n)
		}
		dir := filepath.Join(runDir(h.Workspace, n), "app_"+c.Name)
		if err := os.RemoveAll(dir); err != nil {
			return nil, false, err
		}
		if err := flare.UnzipApp(m.Body, dir); err != nil {
			return nil, false, err
		}
		if err := os.WriteFile(filepath.Join(filepath.Dir(dir), "fl_app.txt"), []byte(name), 0o600); err != nil {
			return nil, false, err
		}
		c.logf("client %s: deployed app %s to %s", c.Name, name, dir)
		return text("OK"), false, nil
	case flare.TopicStart:
		if st.started {
			return text("Client app already started"), false, nil
		}
		n, err := runOf(m, st)
		if err != nil {
			return nil, false, err
		}
		dir := filepath.Join(runDir(h.Workspace, n), "app_"+c.Name)
		if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
			return nil, false, fmt.Errorf("no app deployed for run %d", n)
		}
		tasks, err := h.Start(dir)
		if err != nil {
			return nil, false, err
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
		return text("Start the client app..."), false, nil
	case flare.TopicCheckStatus:
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
		return text(string(b)), false, err
	case flare.TopicAbort:
		// Stop the app; the client stays, ready for the next deploy/start.
		if st.stopWork != nil && st.started {
			st.aborted = true
			st.stopWork()
		}
		return text("Abort signal has been sent to the client App."), false, nil
	case flare.TopicShutdown:
		if st.stopWork != nil {
			st.stopWork()
		}
		return text("Shutdown the client..."), true, nil
	case flare.TopicAbortTask:
		if !st.started || !c.abortTask() {
			return text("No task is running."), false, nil
		}
		return text("OK"), false, nil
	case flare.TopicDeleteRun:
		n, err := parseRunNumber(m.Headers["run_number"])
		if err != nil {
			return nil, false, err
		}
		if st.started && n == st.runStarted {
			return text("Current running run_number can not be deleted."), false, nil
		}
		if err := os.RemoveAll(runDir(h.Workspace, n)); err != nil {
			return nil, false, err
		}
		return text("OK"), false, nil
	case flare.TopicSysInfo:
		b, err := json.Marshal(flare.SysInfo())
		return text(string(b)), false, err
	case flare.TopicAux:
		sh := flare.NewShareable()
		sh.SetHeader(flare.HeaderRC, flare.RCOK)
		if m.Shareable == nil {
			sh.SetHeader(flare.HeaderRC, flare.RCBadTaskData)
		}
		return &flare.AdminReply{Shareable: sh}, false, nil
	}
	return text("unknown topic " + strconv.Quote(flare.LogCut(m.Topic))), false, nil
}

// text is a text reply.
func text(s string) *flare.AdminReply { return &flare.AdminReply{Text: []byte(s)} }
