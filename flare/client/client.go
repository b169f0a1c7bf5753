package client

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/internal/logsafe"
)

// Client is a site: it registers with the FL server, keeps its registration
// alive, and runs the tasks GetTask hands out with its executors until the
// server says the run has ended. It speaks to the server through Wire
// (flare/wire20's Wire for NVFlare 2.0).
type Client struct {
	Name    string
	Target  string                    // host:port of the server
	Tasks   map[string]flare.Executor // task name → executor
	Project string
	Logf    func(format string, args ...any)

	// Wire connects to the server.
	Wire flare.ClientWire
	// Heartbeat is the heartbeat interval (NVFlare: 60 s).
	Heartbeat time.Duration
	// GiveUp bounds how long the server may be unreachable (default 5 min).
	GiveUp time.Duration

	tr flare.ClientTransport
	// regMu makes the goroutines that find their token refused register
	// once between them, not once each (each new registration would void
	// the token the others just got).
	regMu sync.Mutex
	// mu guards what the heartbeat, admin and work goroutines share.
	mu        sync.Mutex
	token     string             // from Register
	run       int64              // the run number the server started us in
	runSet    bool               // run was set; before, run 1 (a one-job server's)
	taskAbort context.CancelFunc // stops the running task (abort_task); nil when idle
	down      outage
}

// outage is a spell of failed requests to the server, logged when it
// starts, every retryLogEvery while it lasts and when it ends, whichever
// goroutine sees it: a client that waits for its server says so once,
// not once a request.
type outage struct {
	since, logged time.Time
	failures      int
}

// retryLogEvery spaces the "still waiting" lines of a long outage.
const retryLogEvery = 30 * time.Second

// currentToken is the token of the latest registration.
func (c *Client) currentToken() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.token
}

// currentRun is the run number the client tells the server it is in:
// NVFlare 2.0's server ends the run of a client that names another one.
func (c *Client) currentRun() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.runSet {
		return 1
	}
	return c.run
}

func (c *Client) setRun(n int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.run, c.runSet = n, true
}

// abortTask stops the task being run, if any: its executor sees its
// context cancelled and the server gets TASK_ABORTED.
func (c *Client) abortTask() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.taskAbort == nil {
		return false
	}
	c.taskAbort()
	return true
}

func (c *Client) logf(format string, args ...any) {
	if c.Logf != nil {
		c.Logf(format, args...)
	}
}

// Run works until the run ends, ctx is cancelled, or the server stays away
// longer than GiveUp.
func (c *Client) Run(ctx context.Context) error {
	if err := flare.CheckName("client name", c.Name); err != nil {
		return fmt.Errorf("client: %w", err)
	}
	if err := c.connect(); err != nil {
		return err
	}
	defer c.tr.Close()
	if err := c.register(ctx); err != nil {
		return c.stopped(ctx, err)
	}
	return c.stopped(ctx, c.work(ctx))
}

// stoppedError is why a client stopped when its context was cancelled.
type stoppedError struct {
	msg string
	err error
}

func (e *stoppedError) Error() string { return e.msg }
func (e *stoppedError) Unwrap() error { return e.err }

// stopped turns the bare "context canceled" of a client told to stop
// (Ctrl-C, SIGTERM) into a sentence saying so; other errors pass.
func (c *Client) stopped(ctx context.Context, err error) error {
	var se *stoppedError
	if err == nil || ctx.Err() == nil || errors.As(err, &se) {
		return err
	}
	if kind := flare.CallKind(err); !errors.Is(err, ctx.Err()) && kind != flare.Canceled && kind != flare.TimedOut {
		return err // failed for its own reason
	}
	return &stoppedError{fmt.Sprintf("client %s stopped (%s)", c.Name, stopReason(ctx)), ctx.Err()}
}

func stopReason(ctx context.Context) string {
	if errors.Is(ctx.Err(), context.Canceled) {
		return "interrupted"
	}
	return ctx.Err().Error()
}

func (c *Client) connect() error {
	if c.Wire == nil {
		return fmt.Errorf("client %s: no wire to the server (e.g. wire20.Wire{})", c.Name)
	}
	tr, err := c.Wire.Dial(c.Target)
	if err != nil {
		return fmt.Errorf("client %s: %w", c.Name, err)
	}
	c.tr = tr
	if c.GiveUp == 0 {
		c.GiveUp = 5 * time.Minute
	}
	return nil
}

// session is who the client is to the server now.
func (c *Client) session() flare.Session {
	return flare.Session{Name: c.Name, Project: c.Project, Token: c.currentToken(), Run: c.currentRun()}
}

// work runs tasks until the run ends.
func (c *Client) work(ctx context.Context) error {
	_, err := c.workTasks(ctx)
	return err
}

// workTasks runs tasks until the run ends and says how many it ran.
func (c *Client) workTasks(ctx context.Context) (int, error) {
	if c.tr == nil {
		return 0, fmt.Errorf("client %s: not connected", c.Name)
	}
	hbCtx, stopHB := context.WithCancel(ctx)
	defer stopHB()
	go c.heartbeat(hbCtx)
	tasks := 0
	for {
		task, err := c.getTask(ctx)
		if err != nil {
			return tasks, err
		}
		switch task.Name {
		case flare.TaskEndRun:
			if tasks == 0 {
				// NVFlare's server ends the run of a client that names
				// another run number than its own, before any task.
				c.logf("warning: client %s: the server ended the run before giving this client any task (this client named run %d: is the server in another run? the run may also have ended before this client joined)", c.Name, c.currentRun())
			} else {
				c.logf("client %s: run ended", c.Name)
			}
			return tasks, nil
		case flare.TaskTryAgain:
			if err := flare.Sleep(ctx, tryAgainAfter(task)); err != nil {
				return tasks, err
			}
			continue
		}
		tasks++
		if err := c.runTask(ctx, task); err != nil {
			return tasks, err
		}
	}
}

// tryAgainAfter is how long to wait after a __try_again__: the server's
// __wait_time__, kept between 50 ms and 2 s (compared as floats: NaN, Inf
// or 1e300 do not convert to a Duration).
func tryAgainAfter(task *flare.Task) time.Duration {
	const lo, hi = 0.05, 2.0
	w, ok := task.Data.WaitTime()
	switch {
	case !ok || !(w < hi): // NaN too
		w = hi
	case w < lo:
		w = lo
	}
	return time.Duration(w * float64(time.Second))
}

// transient says whether a failed request is worth repeating: the server
// is away or slow, not refusing.
func transient(err error) bool {
	kind := flare.CallKind(err)
	return kind == flare.Unavailable || kind == flare.TimedOut
}

// retry calls f until it succeeds, the error is not transient, or GiveUp
// passes, backing off from 200 ms to 5 s.
func (c *Client) retry(ctx context.Context, what string, f func() error) error {
	start := time.Now()
	backoff := 200 * time.Millisecond
	for {
		err := c.call(what, f)
		if err == nil {
			c.serverAnswered(what)
			return nil
		}
		if ctx.Err() != nil {
			return c.waitStopped(ctx, what)
		}
		if !transient(err) {
			return err
		}
		if strings.Contains(err.Error(), "handshake") || strings.Contains(err.Error(), "certificate") {
			return fmt.Errorf("client %s: %s: TLS handshake with %s failed (certificates from another root?): %w", c.Name, what, c.Target, err)
		}
		if time.Since(start) > c.GiveUp {
			return fmt.Errorf("client %s: %s: server at %s unreachable for %s: %w", c.Name, what, c.Target, c.GiveUp.Round(time.Second), err)
		}
		c.serverFailed(what, err, backoff, c.GiveUp-time.Since(start))
		if err := flare.Sleep(ctx, backoff); err != nil {
			return c.waitStopped(ctx, what)
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// slowAnswer is how long a request may wait for its answer before the
// client says it is still waiting (it does not give up: a big model may
// take longer on a slow link).
var slowAnswer = 15 * time.Second

// call runs one request, saying so if its answer is slow to come: a
// server that takes requests and does not answer is otherwise silent.
func (c *Client) call(what string, f func() error) error {
	start, after := time.Now(), slowAnswer
	t := time.AfterFunc(after, func() {
		c.logf("client %s: %s: no answer from the server at %s after %s; still waiting", c.Name, what, c.Target, after)
	})
	err := f()
	if !t.Stop() {
		c.logf("client %s: %s: the server at %s answered after %s", c.Name, what, c.Target, time.Since(start).Round(time.Millisecond))
	}
	return err
}

// waitStopped is the error of a client stopped during a request: it says
// if the client was waiting for a server that did not answer (to
// register, for a task, ...).
func (c *Client) waitStopped(ctx context.Context, what string) error {
	c.mu.Lock()
	waiting := !c.down.since.IsZero()
	c.mu.Unlock()
	if !waiting {
		return &stoppedError{fmt.Sprintf("client %s stopped (%s)", c.Name, stopReason(ctx)), ctx.Err()}
	}
	return &stoppedError{fmt.Sprintf("client %s stopped (%s) while waiting for the server at %s (%s)", c.Name, stopReason(ctx), c.Target, what), ctx.Err()}
}

// serverFailed logs a failed request if it starts an outage, or if the
// outage has not been logged for retryLogEvery.
func (c *Client) serverFailed(what string, err error, next, left time.Duration) {
	now := time.Now()
	reason := flare.CallReason(err)
	c.mu.Lock()
	d := &c.down
	d.failures++
	var msg string
	switch {
	case d.since.IsZero():
		d.since, d.logged = now, now
		msg = fmt.Sprintf("client %s: %s: no answer from the server at %s (%s); waiting for it: retrying in %s, backing off to 5s, giving up in %s",
			c.Name, what, c.Target, reason, next.Round(time.Millisecond), left.Round(time.Second))
	case now.Sub(d.logged) >= retryLogEvery:
		d.logged = now
		msg = fmt.Sprintf("client %s: %s: still waiting for the server at %s (%d failed requests in %s, last: %s); giving up in %s",
			c.Name, what, c.Target, d.failures, now.Sub(d.since).Round(time.Second), reason, left.Round(time.Second))
	}
	c.mu.Unlock()
	if msg != "" {
		c.logf("%s", msg)
	}
}

// serverAnswered ends an outage, saying so if one was logged.
func (c *Client) serverAnswered(what string) {
	c.mu.Lock()
	d := c.down
	c.down = outage{}
	c.mu.Unlock()
	if !d.since.IsZero() {
		c.logf("client %s: %s: the server at %s answers again (after %s, %d failed requests)", c.Name, what, c.Target, time.Since(d.since).Round(time.Millisecond), d.failures)
	}
}

func (c *Client) register(ctx context.Context) error {
	c.logf("client %s: registering with the server at %s", c.Name, c.Target)
	err := c.retry(ctx, "register", func() error {
		s := c.session()
		s.Token = ""
		token, err := c.tr.Register(ctx, s)
		if err != nil {
			return err
		}
		c.mu.Lock()
		c.token = token
		c.mu.Unlock()
		return nil
	})
	if err != nil {
		return err
	}
	// Logged after retry's "answers again", so that the lines come in the
	// order things happened.
	c.logf("client %s: registered", c.Name)
	return nil
}

// maxReRegister bounds the registrations in a row that the server refuses
// at once: a server that forgets every token is not worth looping on.
const maxReRegister = 5

// reRegister registers again after the server refused token stale (it
// restarted, or dropped us as silent). When another goroutine has
// already done so, its new token serves.
func (c *Client) reRegister(ctx context.Context, stale, why string) error {
	c.regMu.Lock()
	defer c.regMu.Unlock()
	if c.currentToken() != stale {
		return nil
	}
	c.logf("client %s: %s; registering again", c.Name, why)
	return c.register(ctx)
}

func (c *Client) heartbeat(ctx context.Context) {
	every := c.Heartbeat
	if every == 0 {
		every = 60 * time.Second
	}
	for flare.Sleep(ctx, every) == nil {
		c.tr.Heartbeat(ctx, c.session())
	}
}

// registered calls f with the client's session, as retry does, and
// registers again when the server does not know the token (it restarted
// or dropped the client), at most maxReRegister times in a row.
func (c *Client) registered(ctx context.Context, what string, f func(s flare.Session) error) error {
	for refused := 0; ; refused++ {
		s := c.session()
		err := c.retry(ctx, what, func() error { return f(s) })
		if flare.CallKind(err) != flare.UnknownToken {
			return err
		}
		if refused == maxReRegister {
			return fmt.Errorf("client %s: the server at %s refuses the token of each new registration: %w", c.Name, c.Target, err)
		}
		if err := c.reRegister(ctx, s.Token, "the server does not know this client (restarted?)"); err != nil {
			return err
		}
	}
}

// getTask asks for work, registering again if the server forgot us.
func (c *Client) getTask(ctx context.Context) (*flare.Task, error) {
	var task *flare.Task
	err := c.registered(ctx, "get task", func(s flare.Session) error {
		var err error
		task, err = c.tr.GetTask(ctx, s)
		return err
	})
	var ce *flare.CallError
	if err != nil && !errors.As(err, &ce) && ctx.Err() == nil {
		return nil, fmt.Errorf("client %s: %w", c.Name, err) // the wire could not read the task
	}
	return task, err
}

// maxTaskErrorBytes bounds the reason a failed task sends the server.
const maxTaskErrorBytes = 1024

// taskErrorText is err as it travels in a failed result's task_error
// header: escaped as a log line (the server logs it as one) and at most
// maxTaskErrorBytes.
func taskErrorText(err error) string { return logsafe.Escape(err.Error(), maxTaskErrorBytes) }

func (c *Client) runTask(ctx context.Context, task *flare.Task) error {
	sh, fl := task.Data, task.Context
	result := flare.NewShareable()
	ex, ok := c.Tasks[task.Name]
	if !ok {
		c.logf("client %s: no executor for task %s", c.Name, strconv.Quote(flare.LogCut(task.Name)))
		result.SetHeader(flare.HeaderRC, flare.RCTaskUnknown)
	} else {
		c.logf("client %s: running task %s", c.Name, task.Name)
		taskCtx, abort := context.WithCancel(ctx)
		c.mu.Lock()
		c.taskAbort = abort
		c.mu.Unlock()
		r, err := ex.Execute(taskCtx, task.Name, sh, fl)
		c.mu.Lock()
		c.taskAbort = nil
		c.mu.Unlock()
		aborted := taskCtx.Err() != nil
		abort()
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case aborted:
			c.logf("client %s: task %s aborted", c.Name, task.Name)
			result.SetHeader(flare.HeaderRC, flare.RCTaskAborted)
		case err != nil:
			// The reason goes to the server too: without it, its log says
			// only EXECUTION_EXCEPTION. An extra header is one more dict
			// entry to NVFlare's server, which reads only the ones it knows.
			why := taskErrorText(err)
			c.logf("client %s: task %s failed: %s", c.Name, strconv.Quote(flare.LogCut(task.Name)), why)
			result.SetHeader(flare.HeaderRC, flare.RCExecutionException)
			result.SetHeader(flare.HeaderTaskError, why)
		default:
			result = r
		}
	}
	// Echo what the server needs to match the result to its task.
	if jar := sh.CookieJar(); jar != nil {
		result.SetHeader(flare.HeaderCookieJar, jar)
	}
	result.SetHeader(flare.HeaderTaskID, sh.HeaderString(flare.HeaderTaskID))
	result.SetHeader(flare.HeaderTaskName, task.Name)
	if _, ok := result.Header(flare.HeaderRC); !ok {
		result.SetHeader(flare.HeaderRC, flare.RCOK)
	}
	s := c.session()
	tok := s.Token
	err := c.retry(ctx, "submit", func() error { return c.tr.Submit(ctx, s, task, result) })
	if flare.CallKind(err) == flare.UnknownToken {
		return c.reRegister(ctx, tok, "result refused, the server does not know this client (restarted?)")
	}
	if err != nil {
		var ce *flare.CallError
		if !errors.As(err, &ce) && ctx.Err() == nil {
			return fmt.Errorf("client %s: %w", c.Name, err) // the wire could not encode it
		}
		return fmt.Errorf("client %s: submitting %s: %w", c.Name, strconv.Quote(flare.LogCut(task.Name)), err)
	}
	return nil
}
