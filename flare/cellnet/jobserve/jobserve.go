// Package jobserve is the server's job cell on NVFlare 2.4+
// (server.<job id>): it answers the sites' job cells (package jobcell is
// the other end) for a server runtime's flare.ServerHandler, as NVFlare
// 2.8's server job process does:
//
//   - __sync_runner__ is answered OK: the job runs;
//   - __job_heartbeat__ marks the site alive;
//   - get_task hands out the runtime's task, its arrays by reference
//     (served by the job's download service, package download), or
//     __try_again__ with a wait time, or __end_run__;
//   - __task_check__ is answered OK;
//   - submit_update's arrays are pulled from the site's own download
//     service and the result goes to the runtime.
//
// Which site sent a message comes from its client_name header, which the
// cell's gate (register.Registrar.Check) has checked against its token.
package jobserve

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/cellnet/cell"
	"github.com/flarego/flarego/flare/cellnet/download"
	"github.com/flarego/flarego/flare/cellnet/fobs"
	"github.com/flarego/flarego/flare/cellnet/jobcell"
	"github.com/flarego/flarego/flare/cellnet/msgpk"
	"github.com/flarego/flarego/flare/cellnet/stream"
	"github.com/flarego/flarego/persistor/pickle"
)

// A Job serves one job's cell.
type Job struct {
	ID      string
	Handler flare.ServerHandler
	// Token is the runtime's token of a site (from its registration).
	Token func(site string) (string, bool)
	// Service serves the arrays of the tasks handed out.
	Service *download.Service
	// Download pulls a result's arrays from the site that sent it.
	Download func(ctx context.Context) fobs.Options
	// Pulls, when set, bounds the results whose arrays are pulled at once
	// (a buffered channel shared by the job's cells): each result is held
	// whole while it comes, and hundreds of sites answering a round at
	// once would otherwise all be held together.
	Pulls chan struct{}
	// WaitTime is the __wait_time__ of a __try_again__ (seconds; NVFlare: 2).
	WaitTime float64
	Logf     func(format string, args ...any)

	st    *stream.Streamer
	mu    sync.Mutex
	ended map[string]bool
}

func (j *Job) logf(format string, args ...any) {
	if j.Logf != nil {
		j.Logf(format, args...)
	}
}

// Serve answers the job cell's topics on st.
func (j *Job) Serve(st *stream.Streamer) {
	j.st = st
	st.Handle(jobcell.ChannelAux, jobcell.TopicSync, func(*cell.Message) *cell.Message { return rc(flare.RCOK) })
	st.Handle(jobcell.ChannelAux, jobcell.TopicTaskCheck, func(*cell.Message) *cell.Message { return rc(flare.RCOK) })
	st.Handle(jobcell.ChannelAux, jobcell.TopicHeartbeat, func(m *cell.Message) *cell.Message {
		if tok, ok := j.token(m); ok {
			j.Handler.Heartbeat(context.Background(), tok)
		}
		return nil
	})
	st.Handle(jobcell.ChannelCommand, jobcell.TopicGetTask, j.getTask)
	st.Handle(jobcell.ChannelCommand, jobcell.TopicSubmit, j.submit)
	download.ServeOn(st, j.Service)
}

func (j *Job) token(m *cell.Message) (string, bool) {
	if j.Token == nil {
		return "", false
	}
	return j.Token(m.String("client_name"))
}

func rc(code string) *cell.Message {
	sh := flare.NewShareable()
	sh.SetHeader(flare.HeaderRC, code)
	b, err := fobs.Encode(sh)
	if err != nil {
		return refuse(cell.RCProcessException, err)
	}
	return &cell.Message{Payload: b}
}

func refuse(code string, err error) *cell.Message {
	return &cell.Message{Headers: msgpk.Map{{Key: cell.HReturnCode, Value: code}, {Key: cell.HError, Value: flare.LogCut(err.Error())}}}
}

func (j *Job) getTask(m *cell.Message) *cell.Message {
	tok, ok := j.token(m)
	if !ok {
		return refuse(cell.RCUnauthenticated, fmt.Errorf("%s is not registered", flare.LogCut(m.String("client_name"))))
	}
	task, err := j.Handler.GetTask(context.Background(), tok)
	if err != nil {
		return refuse(cell.RCProcessException, err)
	}
	sh := &flare.Shareable{Headers: &pickle.Dict{}}
	if task.Data != nil {
		sh.Headers.Items = append(sh.Headers.Items, task.Data.Headers.Items...)
		sh.DXO, sh.Extra = task.Data.DXO, task.Data.Extra
	}
	sh.SetHeader(flare.HeaderTaskName, task.Name)
	sh.SetHeader("task_name", task.Name)
	// NVFlare's site reads the server's public context from every task.
	sh.SetHeader("__peer_ctx__", &flare.FLContext{Props: []flare.Prop{{Name: "__run_num__", Value: j.ID},
		{Name: "__identity_name__", Value: j.Handler.Meta().Project}}})
	if task.Name == flare.TaskEndRun {
		j.endRun(m.String(cell.HOrigin))
	}
	if task.Name == flare.TaskTryAgain {
		w := j.WaitTime
		if w <= 0 {
			w = 2
		}
		sh.SetHeader(flare.HeaderWaitTime, w)
	}
	b, err := j.Service.Encode(sh)
	if err != nil {
		return refuse(cell.RCProcessException, err)
	}
	return &cell.Message{Payload: b}
}

// endRun tells a site's job cell, once, that the run is over, as
// NVFlare's server does (its sites wait for this, not for a task name).
func (j *Job) endRun(fqcn string) {
	j.mu.Lock()
	if j.ended == nil {
		j.ended = map[string]bool{}
	}
	told := j.ended[fqcn]
	j.ended[fqcn] = true
	j.mu.Unlock()
	if told || j.st == nil {
		return
	}
	sh := flare.NewShareable()
	sh.SetHeader("__topic__", jobcell.TopicEndRun)
	b, err := fobs.Encode(sh)
	if err != nil {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		j.st.Post(ctx, fqcn, jobcell.ChannelAux, jobcell.TopicEndRun, nil, b, cell.EncodingFOBS)
	}()
}

func (j *Job) submit(m *cell.Message) *cell.Message {
	tok, ok := j.token(m)
	if !ok {
		return refuse(cell.RCUnauthenticated, fmt.Errorf("%s is not registered", flare.LogCut(m.String("client_name"))))
	}
	ctx := context.Background()
	result := func() (*flare.Shareable, error) {
		if j.Pulls != nil {
			j.Pulls <- struct{}{}
			defer func() { <-j.Pulls }()
		}
		var o fobs.Options
		if j.Download != nil {
			o = j.Download(ctx)
		}
		v, err := fobs.DecodeBytes(m.Payload, o)
		if err != nil {
			return nil, err
		}
		sh, ok := v.(*flare.Shareable)
		if !ok {
			return nil, fmt.Errorf("a result is a Shareable, not a %T", v)
		}
		return sh, nil
	}
	if _, err := j.Handler.Submit(ctx, tok, result); err != nil {
		j.logf("job %s: result of %s refused: %s", j.ID, flare.LogCut(m.String("client_name")), flare.CallReason(err))
		return refuse(cell.RCInvalidRequest, err)
	}
	b, err := fobs.Encode("")
	if err != nil {
		return refuse(cell.RCProcessException, err)
	}
	return &cell.Message{Payload: b}
}
