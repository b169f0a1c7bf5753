package flare

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding/gzip"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/flarego/flarego/proto/fedlearn"
)

// Client is a site: it registers with the FL server, keeps its registration
// alive, and runs the tasks GetTask hands out with its executors until the
// server says the run has ended. It speaks NVFlare 2.0's protocol.
type Client struct {
	Name    string
	Target  string              // host:port of the server
	Tasks   map[string]Executor // task name → executor
	Project string
	Logf    func(format string, args ...any)

	// DialOptions replace the default (insecure) transport, e.g. for mutual TLS.
	DialOptions []grpc.DialOption
	// Gzip compresses requests, as NVFlare's "compression": "Gzip" does
	// (the server answers in kind); on loopback it only costs time.
	Gzip bool
	// Heartbeat is the heartbeat interval (NVFlare: 60 s).
	Heartbeat time.Duration
	// GiveUp bounds how long the server may be unreachable (default 5 min).
	GiveUp time.Duration

	conn *grpc.ClientConn
	fl   fedlearn.FederatedTrainingClient
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
	if err := c.connect(); err != nil {
		return err
	}
	defer c.conn.Close()
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
	if code := status.Code(err); !errors.Is(err, ctx.Err()) && code != codes.Canceled && code != codes.DeadlineExceeded {
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
	opts := c.DialOptions
	if opts == nil {
		opts = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	}
	callOpts := []grpc.CallOption{grpc.MaxCallRecvMsgSize(MaxMessageBytes), grpc.MaxCallSendMsgSize(MaxMessageBytes)}
	if c.Gzip {
		callOpts = append(callOpts, grpc.UseCompressor(gzip.Name))
	}
	opts = append(opts, grpc.WithDefaultCallOptions(callOpts...), grpc.WithChainUnaryInterceptor(c.sendToken))
	conn, err := grpc.NewClient(c.Target, opts...)
	if err != nil {
		return fmt.Errorf("client %s: %w", c.Name, err)
	}
	c.conn, c.fl = conn, fedlearn.NewFederatedTrainingClient(conn)
	if c.GiveUp == 0 {
		c.GiveUp = 5 * time.Minute
	}
	return nil
}

// sendToken puts the client's token in every call's metadata, as
// NVFlare's secure-mode client does: the server's gate checks it before a
// call takes a slot, so a registered client never queues behind calls
// that carry none.
func (c *Client) sendToken(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if tok := c.currentToken(); tok != "" && method != registerMethod {
		ctx = metadata.AppendToOutgoingContext(ctx, tokenHeader, tok)
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}

// work runs tasks until the run ends.
func (c *Client) work(ctx context.Context) error {
	_, err := c.workTasks(ctx)
	return err
}

// workTasks runs tasks until the run ends and says how many it ran.
func (c *Client) workTasks(ctx context.Context) (int, error) {
	if c.fl == nil {
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
		switch task.TaskName {
		case TaskEndRun:
			if tasks == 0 {
				// NVFlare's server ends the run of a client that names
				// another run number than its own, before any task.
				c.logf("warning: client %s: the server ended run %d before giving this client any task (is the server in another run? the run may also have ended before this client joined)", c.Name, c.currentRun())
			} else {
				c.logf("client %s: run ended", c.Name)
			}
			return tasks, nil
		case TaskTryAgain:
			if err := sleep(ctx, tryAgainAfter(task)); err != nil {
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
func tryAgainAfter(task *fedlearn.CurrentTask) time.Duration {
	const lo, hi = 0.05, 2.0
	sh, err := DecodeShareable(task.Data.GetParams()["data"].GetNdarray())
	if err != nil {
		return hi * time.Second
	}
	w, ok := sh.WaitTime()
	switch {
	case !ok || !(w < hi): // NaN too
		w = hi
	case w < lo:
		w = lo
	}
	return time.Duration(w * float64(time.Second))
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// transient says whether a failed request is worth repeating: the server
// is away or slow, not refusing.
func transient(err error) bool {
	st, ok := status.FromError(err)
	return ok && (st.Code() == codes.Unavailable || st.Code() == codes.DeadlineExceeded)
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
		if err := sleep(ctx, backoff); err != nil {
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
	reason := status.Convert(err).Message()
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
	return c.retry(ctx, "register", func() error {
		resp, err := c.fl.Register(ctx, &fedlearn.ClientLogin{ClientName: c.Name, Meta: c.meta()})
		if err != nil {
			return err
		}
		c.mu.Lock()
		c.token = resp.Token
		c.mu.Unlock()
		c.logf("client %s: registered", c.Name)
		return nil
	})
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

func (c *Client) meta() *fedlearn.MetaData {
	p := c.Project
	if p == "" {
		p = "example_project"
	}
	return &fedlearn.MetaData{Project: &fedlearn.MetaData_Project{Name: p}, RunNumber: c.currentRun()}
}

func (c *Client) heartbeat(ctx context.Context) {
	every := c.Heartbeat
	if every == 0 {
		every = 60 * time.Second
	}
	for sleep(ctx, every) == nil {
		c.fl.Heartbeat(ctx, &fedlearn.Token{Token: c.currentToken(), ClientName: c.Name})
	}
}

// state is the ClientState of GetTask and SubmitUpdate.
func (c *Client) state() *fedlearn.ClientState { return c.stateFor(c.currentToken()) }

// stateFor is the ClientState with token tok. NVFlare's server unpickles
// the client's public FLContext from its context["fl_context"].
func (c *Client) stateFor(tok string) *fedlearn.ClientState {
	st := &fedlearn.ClientState{ClientName: c.Name, Token: tok, Meta: c.meta()}
	if b, err := c.flContext(tok); err == nil {
		st.Context = map[string]*fedlearn.NDArray{"fl_context": {Ndarray: b}}
	}
	return st
}

// flContext is the client's public FLContext, as NVFlare 2.0's client
// sends it: run number, identity, client name and token, all public.
func (c *Client) flContext(tok string) ([]byte, error) {
	return EncodeFLContext(&FLContext{Props: []Prop{
		{"__run_num__", c.currentRun(), 1}, {"__identity_name__", c.Name, 1}, {"__client_name__", c.Name, 1}, {"fl_token", tok, 1}}})
}

// getTask asks for work, registering again if the server forgot us (it
// restarted or dropped us).
func (c *Client) getTask(ctx context.Context) (*fedlearn.CurrentTask, error) {
	var task *fedlearn.CurrentTask
	for refused := 0; ; refused++ {
		tok := c.currentToken()
		err := c.retry(ctx, "get task", func() error {
			var err error
			task, err = c.fl.GetTask(ctx, c.stateFor(tok))
			return err
		})
		if status.Code(err) == codes.Unauthenticated {
			if refused == maxReRegister {
				return nil, fmt.Errorf("client %s: the server at %s refuses the token of each new registration: %w", c.Name, c.Target, err)
			}
			if err := c.reRegister(ctx, tok, "the server does not know this client (restarted?)"); err != nil {
				return nil, err
			}
			continue
		}
		return task, err
	}
}

// maxTaskErrorBytes bounds the reason a failed task sends the server.
const maxTaskErrorBytes = 1024

// taskErrorText is err as it travels in a failed result's task_error
// header: escaped as a log line (the server logs it as one) and at most
// maxTaskErrorBytes.
func taskErrorText(err error) string { return escapeCut(err.Error(), maxTaskErrorBytes) }

func (c *Client) runTask(ctx context.Context, task *fedlearn.CurrentTask) error {
	sh, err := DecodeShareable(task.Data.GetParams()["data"].GetNdarray())
	if err != nil {
		return fmt.Errorf("client %s: task %s: %w", c.Name, strconv.Quote(logCut(task.TaskName)), err)
	}
	var fl *FLContext
	if p := task.Data.GetParams()["fl_context"]; p != nil {
		if fl, err = DecodeFLContext(p.Ndarray); err != nil {
			return fmt.Errorf("client %s: task %s: %w", c.Name, strconv.Quote(logCut(task.TaskName)), err)
		}
	}
	result := NewShareable()
	ex, ok := c.Tasks[task.TaskName]
	if !ok {
		c.logf("client %s: no executor for task %s", c.Name, strconv.Quote(logCut(task.TaskName)))
		result.SetHeader(HeaderRC, RCTaskUnknown)
	} else {
		c.logf("client %s: running task %s", c.Name, task.TaskName)
		taskCtx, abort := context.WithCancel(ctx)
		c.mu.Lock()
		c.taskAbort = abort
		c.mu.Unlock()
		r, err := ex.Execute(taskCtx, task.TaskName, sh, fl)
		c.mu.Lock()
		c.taskAbort = nil
		c.mu.Unlock()
		aborted := taskCtx.Err() != nil
		abort()
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case aborted:
			c.logf("client %s: task %s aborted", c.Name, task.TaskName)
			result.SetHeader(HeaderRC, RCTaskAborted)
		case err != nil:
			// The reason goes to the server too: without it, its log says
			// only EXECUTION_EXCEPTION. An extra header is one more dict
			// entry to NVFlare's server, which reads only the ones it knows.
			why := taskErrorText(err)
			c.logf("client %s: task %s failed: %s", c.Name, strconv.Quote(logCut(task.TaskName)), why)
			result.SetHeader(HeaderRC, RCExecutionException)
			result.SetHeader(HeaderTaskError, why)
		default:
			result = r
		}
	}
	// Echo what the server needs to match the result to its task.
	if jar := sh.CookieJar(); jar != nil {
		result.SetHeader(HeaderCookieJar, jar)
	}
	result.SetHeader(HeaderTaskID, sh.HeaderString(HeaderTaskID))
	result.SetHeader(HeaderTaskName, task.TaskName)
	if _, ok := result.Header(HeaderRC); !ok {
		result.SetHeader(HeaderRC, RCOK)
	}
	data, err := EncodeShareable(result)
	if err != nil {
		return fmt.Errorf("client %s: encoding the result: %w", c.Name, err)
	}
	tok := c.currentToken()
	flc, err := c.flContext(tok)
	if err != nil {
		return err
	}
	err = c.retry(ctx, "submit", func() error {
		_, err := c.fl.SubmitUpdate(ctx, &fedlearn.Contribution{Client: c.stateFor(tok), TaskName: task.TaskName,
			Data: &fedlearn.ModelData{Params: map[string]*fedlearn.NDArray{"data": {Ndarray: data}, "fl_context": {Ndarray: flc}}}})
		return err
	})
	if status.Code(err) == codes.Unauthenticated {
		return c.reRegister(ctx, tok, "result refused, the server does not know this client (restarted?)")
	}
	if err != nil {
		return fmt.Errorf("client %s: submitting %s: %w", c.Name, strconv.Quote(logCut(task.TaskName)), err)
	}
	return nil
}
