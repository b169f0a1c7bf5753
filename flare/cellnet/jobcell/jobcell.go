// Package jobcell is a site's job cell on NVFlare 2.4+ (site-1.<job id>)
// as a flare.ClientTransport, so that the client runtime (flare/client)
// runs a CellNet job as it runs a 2.0 one. Everything goes as blob streams
// (package stream) to the server's job cell, server.<job id>:
//
//   - Register is __sync_runner__ (aux_communication): the server's job
//     answers OK once it runs; the token is the site's own, from the
//     parent cell's registration;
//   - Heartbeat is __job_heartbeat__, a post;
//   - GetTask is server_command/get_task; its arrays come by reference
//     and are pulled through Arrays (the download service);
//   - Submit is __task_check__ (is the task still wanted?) then
//     server_command/submit_update, arrays sent inside the payload;
//   - the server's __end_run__ ends the run: a GetTask waiting for the
//     server's answer returns __end_run__ at once, and so does every
//     GetTask after it.
package jobcell

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/cellnet/cell"
	"github.com/flarego/flarego/flare/cellnet/fobs"
	"github.com/flarego/flarego/flare/cellnet/msgpk"
	"github.com/flarego/flarego/flare/cellnet/stream"
	"github.com/flarego/flarego/persistor/pickle"
)

// Channels and topics of a job cell.
const (
	ChannelAux     = "aux_communication"
	ChannelCommand = "server_command"
	TopicSync      = "__sync_runner__"
	TopicHeartbeat = "__job_heartbeat__"
	TopicTaskCheck = "__task_check__"
	TopicEndRun    = "__end_run__"
	TopicGetTask   = "get_task"
	TopicSubmit    = "submit_update"
)

// CallTimeout bounds one request's wait for its reply, as NVFlare's
// client bounds get_task (the runtime retries what times out).
var CallTimeout = 60 * time.Second

// A Transport is one job cell.
type Transport struct {
	Cell   *cell.Cell
	Stream *stream.Streamer
	// Site, Project and Job are who the cell is: site-1, the project's
	// name, the job id.
	Site, Project, Job string
	// Token is the site's token (its parent cell's registration).
	Token string
	// Options gives the decoding options of each reply: how the arrays a
	// task sends by reference are downloaded (a new Options per reply, so
	// that what one reply downloaded is not kept for the next).
	Options func(ctx context.Context) fobs.Options

	// EncodeResult, when set, encodes submit_update's payload (with the
	// download service's Encode, the arrays go by reference and the
	// server pulls them); nil sends them inside the payload.
	EncodeResult func(v any) ([]byte, error)

	ended atomic.Bool
	// run is cancelled by the server's __end_run__: the requests waiting
	// for the server's answer then stop waiting.
	run    context.Context
	endRun context.CancelFunc

	mu       sync.Mutex
	lastTask string
}

var _ flare.ClientTransport = (*Transport)(nil)

// New makes the transport of a job cell and answers the server's
// __end_run__ on it.
func New(c *cell.Cell, s *stream.Streamer, site, project, job, token string) *Transport {
	t := &Transport{Cell: c, Stream: s, Site: site, Project: project, Job: job, Token: token}
	t.run, t.endRun = context.WithCancel(context.Background())
	s.Handle(ChannelAux, TopicEndRun, func(*cell.Message) *cell.Message {
		t.ended.Store(true)
		t.endRun()
		return aux(t.serverName(), flare.RCOK)
	})
	return t
}

// untilEnded is ctx, also cancelled when the server ends the run: a
// request still waiting for its answer then (a get_task the server's job
// will never answer, as it has ended) must not hold the run for
// CallTimeout.
func (t *Transport) untilEnded(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	if t.run == nil {
		return ctx, cancel
	}
	stop := context.AfterFunc(t.run, cancel)
	return ctx, func() { stop(); cancel() }
}

// Ended says whether the server ended the job's run.
func (t *Transport) Ended() bool { return t.ended.Load() }

func (t *Transport) server() string     { return "server." + t.Job }
func (t *Transport) serverName() string { return t.Project }

// aux is the reply of an aux topic: a Shareable with its return code.
func aux(identity, rc string) *cell.Message {
	sh := flare.NewShareable()
	sh.SetHeader(flare.HeaderRC, rc)
	b, err := fobs.Encode(sh)
	if err != nil {
		return &cell.Message{Headers: msgpk.Map{{Key: cell.HReturnCode, Value: cell.RCProcessException}}}
	}
	return &cell.Message{Payload: b}
}

// peerProps is who this cell is, as an aux message's __peer_props__.
func (t *Transport) peerProps() *pickle.Dict {
	d := &pickle.Dict{}
	d.Set("__run_num__", t.Job)
	d.Set("__identity_name__", t.Site)
	d.Set("__fqsn__", t.Site)
	d.Set("__is_leaf__", true)
	d.Set("__client_name__", t.Site)
	d.Set("__current_job_id__", t.Job)
	return d
}

// peerContext is the same as a task message's __peer_ctx__.
func (t *Transport) peerContext() *flare.FLContext {
	return &flare.FLContext{Props: []flare.Prop{{Name: "__run_num__", Value: t.Job}, {Name: "__identity_name__", Value: t.Site},
		{Name: "__fqsn__", Value: t.Site}, {Name: "__is_leaf__", Value: true}, {Name: "__client_name__", Value: t.Site},
		{Name: "__current_job_id__", Value: t.Job}}}
}

func (t *Transport) auxShareable(topic string) *flare.Shareable {
	sh := flare.NewShareable()
	sh.SetHeader("__topic__", topic)
	sh.SetHeader("__peer_props__", t.peerProps())
	return sh
}

// request streams sh to the server's job cell and decodes the reply.
func (t *Transport) request(ctx context.Context, channel, topic string, headers msgpk.Map, sh *flare.Shareable) (*flare.Shareable, error) {
	encode := fobs.Encode
	if topic == TopicSubmit && t.EncodeResult != nil {
		encode = t.EncodeResult
	}
	b, err := encode(sh)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", topic, err)
	}
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	r, err := t.Stream.Request(ctx, t.server(), channel, topic, headers, b, cell.EncodingFOBS)
	if err != nil {
		rc := ""
		if r != nil {
			rc = r.String(cell.HReturnCode)
		}
		return nil, classify(ctx, rc, err)
	}
	if len(r.Payload) == 0 {
		return flare.NewShareable(), nil
	}
	var o fobs.Options
	if t.Options != nil {
		o = t.Options(ctx)
	}
	v, err := fobs.DecodeBytes(r.Payload, o)
	if err != nil {
		return nil, fmt.Errorf("%s reply: %w", topic, err)
	}
	switch x := v.(type) {
	case *flare.Shareable:
		return x, nil
	case string, nil:
		// submit_update's reply is an empty string.
		return flare.NewShareable(), nil
	}
	return nil, fmt.Errorf("%s reply: a %T, not a Shareable", topic, v)
}

// classify turns a failed request into a *flare.CallError; rc is the
// reply's return code, if one came.
func classify(ctx context.Context, rc string, err error) error {
	switch rc {
	case cell.RCServiceUnavailable, cell.RCTargetUnreachable, cell.RCTimeout, cell.RCCommError:
		// The server's job cell is not up yet (its process is starting),
		// or the route to it is down for a moment.
		return &flare.CallError{Kind: flare.Unavailable, Reason: "the server's job answers " + rc, Err: err}
	}
	switch {
	case errors.Is(err, context.Canceled) && ctx.Err() != nil:
		return &flare.CallError{Kind: flare.Canceled, Err: err}
	case errors.Is(err, context.DeadlineExceeded):
		return &flare.CallError{Kind: flare.TimedOut, Reason: "no reply in time", Err: err}
	case errors.Is(err, cell.ErrReply):
		return &flare.CallError{Kind: flare.Refused, Reason: err.Error(), Err: err}
	}
	return &flare.CallError{Kind: flare.Unavailable, Reason: err.Error(), Err: err}
}

// SyncTimeout bounds each __sync_runner__: the server's job cell does not
// answer until it runs, and the runtime asks again.
var SyncTimeout = 2 * time.Second

// Register waits for the server's job to run (__sync_runner__); the
// token is the site's. Until the server's job runs, any answer but OK is
// worth repeating, as NVFlare's client repeats the sync: a cellnet reply
// not ok too (NVFlare main's job cell answers service_unavailable while
// its runner is starting).
func (t *Transport) Register(ctx context.Context, s flare.Session) (string, error) {
	sctx, cancel := context.WithTimeout(ctx, SyncTimeout)
	defer cancel()
	r, err := t.request(sctx, ChannelAux, TopicSync, nil, t.auxShareable(TopicSync))
	if err != nil {
		var ce *flare.CallError
		if errors.As(err, &ce) && ce.Kind == flare.Refused && errors.Is(err, cell.ErrReply) {
			ce.Kind = flare.Unavailable
		}
		return "", err
	}
	if rc := r.ReturnCode(); rc != flare.RCOK {
		// The server's job is not up yet: worth repeating.
		return "", &flare.CallError{Kind: flare.Unavailable, Reason: "the server's job answers " + flare.LogSafe(rc), Err: fmt.Errorf("%s: %s", TopicSync, flare.LogSafe(rc))}
	}
	return t.Token, nil
}

// Heartbeat posts __job_heartbeat__.
func (t *Transport) Heartbeat(ctx context.Context, s flare.Session) error {
	b, err := fobs.Encode(t.auxShareable(TopicHeartbeat))
	if err != nil {
		return err
	}
	return t.Stream.Post(ctx, t.server(), ChannelAux, TopicHeartbeat, nil, b, cell.EncodingFOBS)
}

// GetTask asks for a task.
func (t *Transport) GetTask(ctx context.Context, s flare.Session) (*flare.Task, error) {
	if t.ended.Load() {
		return &flare.Task{Name: flare.TaskEndRun, Data: flare.NewShareable()}, nil
	}
	req := flare.NewShareable()
	req.SetHeader("__peer_ctx__", t.peerContext())
	t.mu.Lock()
	if t.lastTask != "" {
		req.SetHeader("last_task_id", t.lastTask)
	}
	t.mu.Unlock()
	ctx, cancel := t.untilEnded(ctx)
	defer cancel()
	r, err := t.request(ctx, ChannelCommand, TopicGetTask, msgpk.Map{{Key: "project_name", Value: t.Project}}, req)
	if err != nil {
		if t.ended.Load() {
			return &flare.Task{Name: flare.TaskEndRun, Data: flare.NewShareable()}, nil
		}
		return nil, err
	}
	name := r.HeaderString(flare.HeaderTaskName)
	if name == "" {
		name = flare.TaskTryAgain
	}
	task := &flare.Task{Name: name, Data: r}
	if v, ok := r.Header("__peer_ctx__"); ok {
		task.Context, _ = v.(*flare.FLContext)
	}
	return task, nil
}

// Submit checks that the server still wants the task's result, then sends it.
func (t *Transport) Submit(ctx context.Context, s flare.Session, task *flare.Task, result *flare.Shareable) error {
	id := task.Data.HeaderString(flare.HeaderTaskID)
	check := t.auxShareable(TopicTaskCheck)
	check.SetHeader(flare.HeaderTaskID, id)
	r, err := t.request(ctx, ChannelAux, TopicTaskCheck, nil, check)
	if err != nil {
		return err
	}
	if rc := r.ReturnCode(); rc == flare.RCTaskUnknown {
		return &flare.CallError{Kind: flare.Refused, Reason: "the server no longer wants task " + flare.LogCut(id),
			Err: fmt.Errorf("%s: task %s is gone", TopicTaskCheck, flare.LogCut(id))}
	}
	result.SetHeader("__peer_ctx__", t.peerContext())
	if _, err := t.request(ctx, ChannelCommand, TopicSubmit, msgpk.Map{{Key: "project_name", Value: t.Project}}, result); err != nil {
		return err
	}
	t.mu.Lock()
	t.lastTask = id
	t.mu.Unlock()
	return nil
}

// Poll has nothing: a job cell gets no admin requests.
func (t *Transport) Poll(ctx context.Context, s flare.Session) ([]*flare.AdminRequest, error) {
	return nil, nil
}

// Reply is not used on a job cell.
func (t *Transport) Reply(ctx context.Context, s flare.Session, req *flare.AdminRequest, reply *flare.AdminReply) error {
	return nil
}

// Close says bye to the server for this cell; the caller closes the connection.
func (t *Transport) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := t.Cell.Request(ctx, "server", "cellnet.channel", "bye", nil, nil, cell.EncodingNone)
	return err
}
