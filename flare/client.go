package flare

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding/gzip"
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
	// mu guards what the heartbeat, admin and work goroutines share.
	mu        sync.Mutex
	token     string             // from Register
	taskAbort context.CancelFunc // stops the running task (abort_task); nil when idle
}

// currentToken is the token of the latest registration.
func (c *Client) currentToken() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.token
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
		return err
	}
	return c.work(ctx)
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
	opts = append(opts, grpc.WithDefaultCallOptions(callOpts...))
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

// work runs tasks until the run ends.
func (c *Client) work(ctx context.Context) error {
	if c.fl == nil {
		return fmt.Errorf("client %s: not connected", c.Name)
	}
	hbCtx, stopHB := context.WithCancel(ctx)
	defer stopHB()
	go c.heartbeat(hbCtx)
	for {
		task, err := c.getTask(ctx)
		if err != nil {
			return err
		}
		switch task.TaskName {
		case TaskEndRun:
			c.logf("client %s: run ended", c.Name)
			return nil
		case TaskTryAgain:
			wait := 2 * time.Second
			if sh, err := DecodeShareable(task.Data.GetParams()["data"].GetNdarray()); err == nil {
				if w, ok := sh.WaitTime(); ok && w > 0 {
					wait = time.Duration(w * float64(time.Second))
				}
			}
			if err := sleep(ctx, min(wait, 2*time.Second)); err != nil {
				return err
			}
			continue
		}
		if err := c.runTask(ctx, task); err != nil {
			return err
		}
	}
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

// retry calls f until it succeeds, the error is not transient, or GiveUp
// passes, backing off from 200 ms to 5 s.
func (c *Client) retry(ctx context.Context, what string, f func() error) error {
	start := time.Now()
	backoff := 200 * time.Millisecond
	for {
		err := f()
		if err == nil {
			return nil
		}
		if st, ok := status.FromError(err); !ok || (st.Code() != codes.Unavailable && st.Code() != codes.DeadlineExceeded) {
			return err
		}
		if strings.Contains(err.Error(), "handshake") || strings.Contains(err.Error(), "certificate") {
			return fmt.Errorf("client %s: %s: TLS handshake with %s failed (certificates from another root?): %w", c.Name, what, c.Target, err)
		}
		if time.Since(start) > c.GiveUp {
			return fmt.Errorf("client %s: %s: server unreachable for %s: %w", c.Name, what, c.GiveUp.Round(time.Second), err)
		}
		if err := sleep(ctx, backoff); err != nil {
			return err
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (c *Client) register(ctx context.Context) error {
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

func (c *Client) meta() *fedlearn.MetaData {
	p := c.Project
	if p == "" {
		p = "example_project"
	}
	return &fedlearn.MetaData{Project: &fedlearn.MetaData_Project{Name: p}, RunNumber: 1}
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

// state is the ClientState of GetTask and SubmitUpdate. NVFlare's server
// unpickles the client's public FLContext from its context["fl_context"].
func (c *Client) state() *fedlearn.ClientState {
	st := &fedlearn.ClientState{ClientName: c.Name, Token: c.currentToken(), Meta: c.meta()}
	if b, err := c.flContext(); err == nil {
		st.Context = map[string]*fedlearn.NDArray{"fl_context": {Ndarray: b}}
	}
	return st
}

// flContext is the client's public FLContext, as NVFlare 2.0's client
// sends it: run number, identity, client name and token, all public.
func (c *Client) flContext() ([]byte, error) {
	return EncodeFLContext(&FLContext{Props: []Prop{
		{"__run_num__", int64(1), 1}, {"__identity_name__", c.Name, 1}, {"__client_name__", c.Name, 1}, {"fl_token", c.currentToken(), 1}}})
}

// getTask asks for work, registering again if the server forgot us (it
// restarted or dropped us).
func (c *Client) getTask(ctx context.Context) (*fedlearn.CurrentTask, error) {
	var task *fedlearn.CurrentTask
	for {
		err := c.retry(ctx, "get task", func() error {
			var err error
			task, err = c.fl.GetTask(ctx, c.state())
			return err
		})
		if status.Code(err) == codes.Unauthenticated {
			c.logf("client %s: server does not know us (restarted?); registering again", c.Name)
			if err := c.register(ctx); err != nil {
				return nil, err
			}
			continue
		}
		return task, err
	}
}

func (c *Client) runTask(ctx context.Context, task *fedlearn.CurrentTask) error {
	sh, err := DecodeShareable(task.Data.GetParams()["data"].GetNdarray())
	if err != nil {
		return fmt.Errorf("client %s: task %s: %w", c.Name, task.TaskName, err)
	}
	var fl *FLContext
	if p := task.Data.GetParams()["fl_context"]; p != nil {
		if fl, err = DecodeFLContext(p.Ndarray); err != nil {
			return fmt.Errorf("client %s: task %s: %w", c.Name, task.TaskName, err)
		}
	}
	result := NewShareable()
	ex, ok := c.Tasks[task.TaskName]
	if !ok {
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
			c.logf("client %s: task %s failed: %v", c.Name, task.TaskName, err)
			result.SetHeader(HeaderRC, RCExecutionException)
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
	flc, err := c.flContext()
	if err != nil {
		return err
	}
	err = c.retry(ctx, "submit", func() error {
		_, err := c.fl.SubmitUpdate(ctx, &fedlearn.Contribution{Client: c.state(), TaskName: task.TaskName,
			Data: &fedlearn.ModelData{Params: map[string]*fedlearn.NDArray{"data": {Ndarray: data}, "fl_context": {Ndarray: flc}}}})
		return err
	})
	if status.Code(err) == codes.Unauthenticated {
		c.logf("client %s: result refused, the server restarted; registering again", c.Name)
		return c.register(ctx)
	}
	if err != nil {
		return fmt.Errorf("client %s: submitting %s: %w", c.Name, task.TaskName, err)
	}
	return nil
}
