package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/persistor"
	"github.com/flarego/flarego/persistor/pickle"
)

// maxClients bounds the registered clients: a registration is
// unauthenticated without TLS, and each one is kept until its heart-beat
// timeout.
const maxClients = 1024

// Server is the FL server running NVFlare's ScatterAndGather workflow with
// the full-model shareable generator and the NUM_STEPS-weighted in-time
// aggregator, storing each global model through a ModelPersistor. It
// answers its clients through its Wire, which calls the server's
// unexported handler (a flare.ServerHandler).
//
// A server from New runs its one job and stops; one from
// NewAdmin waits for an operator's admin console (Console) to
// upload, deploy and start apps, one run after another, until shutdown.
type Server struct {
	Project          string
	HeartBeatTimeout time.Duration
	Logf             func(format string, args ...any)
	// Wire serves the clients: flare/wire20's ServerWire for NVFlare 2.0's
	// gRPC (with its TLS options). Serve needs one.
	Wire flare.ServerWire
	// OutputDir, for a server without a console workspace, receives
	// cross-site evaluation results (CROSS_VAL_DIR/cross_val_results.json).
	OutputDir string
	// EndGrace is how long a one-job server waits, after the last round,
	// for live clients to fetch __end_run__ (default 10 s).
	EndGrace time.Duration
	// TBLogs, when set, is the TensorBoard folder: each run writes its
	// per-round values and cross-site matrix into TBLogs/server (tblogs.go).
	TBLogs string
	// Resume, when set, names the job (a fingerprint of its app and
	// settings): each global model is saved with it and its round in the
	// checkpoint's meta_props, and a run whose persistor still holds an
	// unfinished run's model of the same job goes on from the next round
	// (resume.go).
	Resume string

	mu        sync.Mutex
	changed   chan struct{} // closed and replaced on every state change
	clients   map[string]*clientEntry
	run       *runState // the current or last run; nil before the first
	runNumber int       // set by the admin's set_run_number; -1 before
	oneJob    bool
	closed    bool // no client joins the run any more (CloseMembership)
	ctx       context.Context
	cancel    context.CancelCauseFunc
	shutdown  bool // the console shut the server down
	// resultModel is the model a result must match now (the wire bounds
	// results by its size).
	resultModel atomic.Pointer[persistor.StateDict]
	// tryAgain and endRunTask are the special tasks, the same for every client.
	tryAgain, endRunTask *flare.Task
	admin                adminQueue
	console              *console // nil without Console
}

type clientEntry struct {
	name     string
	token    string
	lastSeen time.Time
}

// runState is one run of a server app: the workflow's progress.
type runState struct {
	number      int
	app         string
	sag         *flare.ScatterAndGatherArgs
	persist     flare.ModelPersistor
	status      string // starting, started, stopped
	round       int
	taskID      string
	task        *flare.Task // the round's task, the same for every client
	acc         *accumulator
	contributed map[string]bool
	failed      map[string]bool // clients whose result this round was an error (e.g. abort_task)
	finished    bool
	ended       map[string]bool   // clients told __end_run__
	took        map[string]bool   // clients handed a task of this run
	lost        map[string]string // site → why it dropped out of the run
	lostOrder   []string          // the sites of lost, in the order they were lost
	cross       *crossSite        // CrossSiteModelEval after the rounds, or nil
	curves      *runCurves        // TensorBoard event file, or nil
	cancel      context.CancelFunc
	err         error
}

// Machine states as NVFlare's check_status shows them.
const (
	statusStarting = "starting"
	statusStarted  = "started"
	statusStopped  = "stopped"
)

func newRun(cfg *flare.ServerConfig, reg *flare.Registry, number int, app string) (*runState, error) {
	sag, err := cfg.ScatterAndGather()
	if err != nil {
		return nil, err
	}
	p, err := reg.CheckServerComponents(cfg, sag)
	if err != nil {
		return nil, err
	}
	csv, err := cfg.CrossSiteModelEval()
	if err != nil {
		return nil, err
	}
	r := &runState{number: number, app: app, sag: sag, persist: p, status: statusStarting, ended: map[string]bool{},
		took: map[string]bool{}, lost: map[string]string{}}
	if csv != nil {
		r.cross = &crossSite{args: csv}
	}
	return r, nil
}

func heartBeat(cfg *flare.ServerConfig) time.Duration {
	if cfg != nil && cfg.Server.HeartBeatTimeout > 0 {
		return time.Duration(cfg.Server.HeartBeatTimeout * float64(time.Second))
	}
	return 600 * time.Second
}

// New makes a server that runs the job of config_fed_server.json
// once (run number 1), building its persistor through reg.
func New(cfg *flare.ServerConfig, reg *flare.Registry) (*Server, error) {
	r, err := newRun(cfg, reg, 1, "")
	if err != nil {
		return nil, err
	}
	s := NewAdmin()
	s.HeartBeatTimeout, s.run, s.runNumber, s.oneJob = heartBeat(cfg), r, 1, true
	return s, nil
}

// NewAdmin makes a server without an app: its Console deploys and
// starts them.
func NewAdmin() *Server {
	return &Server{Project: "example_project", HeartBeatTimeout: 600 * time.Second,
		changed: make(chan struct{}), clients: map[string]*clientEntry{}, runNumber: -1,
		tryAgain: specialTask(flare.TaskTryAgain, tryAgainWait), endRunTask: specialTask(flare.TaskEndRun, 0)}
}

func (s *Server) logf(format string, args ...any) {
	if s.Logf != nil {
		s.Logf(format, args...)
	}
}

// notify wakes the workflow; s.mu must be held.
func (s *Server) notify() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// Serve answers clients on lis through s.Wire. A one-job server returns
// once every round is done and every live client was told the run ended;
// an admin server when its console shuts it down. Both stop when ctx is
// cancelled.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	if s.Wire == nil {
		return errors.New("server: no wire to serve clients with")
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	s.mu.Lock()
	s.cancel, s.ctx = cancel, ctx
	r, oneJob := s.run, s.oneJob
	s.mu.Unlock()
	wireErr := make(chan error, 1)
	go func() { wireErr <- s.Wire.Serve(ctx, lis, handler{s}) }()
	var err error
	if oneJob {
		r.status = statusStarted
		err = s.workflow(ctx, r)
		if err == nil {
			grace := s.EndGrace
			if grace == 0 {
				grace = 10 * time.Second
			}
			err = s.endRun(ctx, r, grace)
		}
	} else {
		<-ctx.Done()
		s.mu.Lock()
		if s.run != nil && s.run.cancel != nil {
			s.run.cancel()
		}
		if !s.shutdown {
			err = ctx.Err()
		}
		s.mu.Unlock()
	}
	cancel(nil) // the wire lets the calls in flight end
	if e := <-wireErr; err == nil && e != nil {
		err = e
	}
	return err
}

// CloseMembership says that no client will join the run any more (a job
// whose sites were chosen when it started, all deployed now): a round
// that cannot get min_clients results from the live clients then fails
// with the reason instead of waiting for clients that cannot come.
func (s *Server) CloseMembership() {
	s.mu.Lock()
	s.closed = true
	s.notify()
	s.mu.Unlock()
}

// Stop ends Serve at once: its wire drops the calls in flight.
func (s *Server) Stop() {
	s.mu.Lock()
	cancel := s.cancel
	s.mu.Unlock()
	if cancel != nil {
		cancel(flare.ErrStopNow)
	}
}

func (s *Server) workflow(ctx context.Context, run *runState) (err error) {
	defer func() {
		if errors.Is(err, context.Canceled) {
			err = errors.New("aborted")
		}
		s.mu.Lock()
		run.finished, run.status, run.acc, run.err = true, statusStopped, nil, err
		lost, sites := run.lostSites()
		s.notify()
		s.mu.Unlock()
		if len(lost) > 0 {
			s.logf("run %d lost %d of %d site(s): %s", run.number, len(lost), sites, strings.Join(lost, "; "))
		}
	}()
	defer s.startCurves(run)()
	ck, err := run.persist.Load()
	if err != nil {
		return err
	}
	sag := run.sag
	first := sag.StartRound
	if last, r := s.resumed(run); last != nil {
		ck, first = last, r
	}
	global := ck.Model
	for r := first; r < sag.NumRounds; r++ {
		start := time.Now()
		if err := s.startRound(run, r, global); err != nil {
			return err
		}
		s.logf("round %d/%d started: task %s to %d client(s)", r+1, sag.NumRounds, sag.TrainTaskName, s.liveClients())
		acc, n, err := s.gather(ctx, run, r)
		if err != nil {
			return err
		}
		if global, err = acc.result(); err != nil {
			return fmt.Errorf("round %d/%d: aggregating %d result(s): %w; the global model was not saved", r+1, sag.NumRounds, n, err)
		}
		ck.Model = global
		s.markRound(ck, r, sag.NumRounds)
		if err := run.persist.Save(ck); err != nil {
			return fmt.Errorf("round %d/%d: saving the global model: %w", r+1, sag.NumRounds, err)
		}
		s.logf("round %d/%d done: aggregated %d result(s) (%.0f steps) in %.2f s; global model saved", r+1, sag.NumRounds, n, acc.total, time.Since(start).Seconds())
		s.roundCurves(run, r, n, acc.total, time.Since(start).Seconds())
	}
	if run.cross != nil {
		return s.crossSiteEval(ctx, run, global)
	}
	return nil
}

func (s *Server) startRound(run *runState, r int, global *persistor.StateDict) error {
	taskID := flare.NewUUID()
	sh := flare.NewShareable()
	sh.SetHeader(flare.HeaderTaskName, run.sag.TrainTaskName)
	sh.SetHeader(flare.HeaderTaskID, taskID)
	sh.SetHeader(flare.HeaderCurrentRound, int64(r))
	sh.SetHeader(flare.HeaderNumRounds, int64(run.sag.NumRounds))
	wf := run.sag.WorkflowID
	if wf == "" {
		wf = "scatter_and_gather"
	}
	if run.sag.FedAvg {
		sh.SetHeader("start_round", int64(run.sag.StartRound))
	}
	sh.SetHeader(flare.HeaderCookieJar, &pickle.Dict{Items: []pickle.Item{
		{Key: flare.HeaderWorkflow, Value: wf}, {Key: flare.HeaderTaskID, Value: taskID}, {Key: "contribution_round", Value: int64(r)}}})
	sh.SetHeader(flare.HeaderContentType, "DXO")
	sh.DXO = flare.WeightsDXO(global, nil)
	task := &flare.Task{Name: run.sag.TrainTaskName, Data: sh}
	if err := s.Wire.Prepare(task); err != nil {
		return fmt.Errorf("round %d/%d: encoding the task: %w", r+1, run.sag.NumRounds, err)
	}
	acc, err := newAccumulator(global)
	if err != nil {
		return err
	}
	s.resultModel.Store(global)
	s.mu.Lock()
	run.round, run.taskID, run.task, run.acc = r, taskID, task, acc
	run.contributed, run.failed = map[string]bool{}, map[string]bool{}
	s.notify()
	s.mu.Unlock()
	return nil
}

// gather waits for min_clients results, then up to
// wait_time_after_min_received more or until every live client answered.
func (s *Server) gather(ctx context.Context, run *runState, r int) (*accumulator, int, error) {
	sag := run.sag
	wait := time.Duration(sag.WaitTimeAfterMinReceived * float64(time.Second))
	var minAt time.Time
	started := time.Now()
	lastLog := started
	for {
		s.mu.Lock()
		s.dropDead()
		n, failed, live, closed := len(run.contributed), len(run.failed), len(s.clients), s.closed
		allIn := n > 0 && n+failed >= live
		ch := s.changed
		acc := run.acc
		s.mu.Unlock()
		if n >= sag.MinClients {
			if minAt.IsZero() {
				minAt = time.Now()
			}
			// FedAvg waits for every live client; ScatterAndGather for
			// wait_time_after_min_received at most.
			if allIn || (!sag.FedAvg && time.Since(minAt) >= wait) {
				s.mu.Lock()
				run.acc = nil // late results for this round are refused
				s.mu.Unlock()
				return acc, n, nil
			}
		}
		if n < sag.MinClients && closed {
			if possible := n + max(0, live-n-failed); possible < sag.MinClients {
				return nil, 0, fmt.Errorf("round %d/%d: %d result(s) and %d live client(s) still working, fewer than min_clients %d; the run's clients were all chosen when it started, so no other can join",
					r+1, sag.NumRounds, n, possible-n, sag.MinClients)
			}
		}
		if n < sag.MinClients && failed > 0 && n+failed >= live {
			return nil, 0, fmt.Errorf("round %d/%d: %d result(s) of min_clients %d: %d client(s) failed the task and every other live client answered", r+1, sag.NumRounds, n, sag.MinClients, failed)
		}
		if sag.TrainTimeout > 0 && time.Since(started) > time.Duration(sag.TrainTimeout*float64(time.Second)) {
			return nil, 0, fmt.Errorf("round %d/%d: %d of min_clients %d results within train_timeout %.0f s", r+1, sag.NumRounds, n, sag.MinClients, sag.TrainTimeout)
		}
		if time.Since(lastLog) > 30*time.Second {
			s.logf("round %d/%d: waiting: %d of %d results needed, %d live client(s)", r+1, sag.NumRounds, n, sag.MinClients, live)
			lastLog = time.Now()
		}
		timer := time.NewTimer(250 * time.Millisecond)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil, 0, ctx.Err()
		case <-ch:
		case <-timer.C:
		}
		timer.Stop()
	}
}

// forgetClient forgets the client of token tok and what the admin channel
// holds for it; s.mu must be held.
func (s *Server) forgetClient(tok string) {
	delete(s.clients, tok)
	s.admin.forget(tok)
}

// dropDead forgets clients silent for longer than the heart-beat timeout;
// s.mu must be held.
func (s *Server) dropDead() {
	for tok, c := range s.clients {
		if time.Since(c.lastSeen) > s.HeartBeatTimeout {
			s.logf("client %s: no heartbeat for %s, dropped", c.name, s.HeartBeatTimeout)
			s.forgetClient(tok)
			if r := s.run; r != nil && !r.finished && r.took[c.name] {
				r.siteLost(c.name, fmt.Sprintf("no heartbeat for %s, dropped", s.HeartBeatTimeout))
			}
		}
	}
}

func (s *Server) liveClients() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.clients)
}

// endRun ends a one-job server's run as NVFlare 2.0's server does: once
// the workflow is over, GetTask answers __end_run__ to every client, and the
// server waits until each live client has fetched it. Only then are the
// clients that poll the admin channel told to shut down (an NVFlare client
// kills its training process on shutdown: told earlier, that process dies
// before it hears the run ended). Each wait ends after grace at most.
func (s *Server) endRun(ctx context.Context, run *runState, grace time.Duration) error {
	missing, err := s.waitClients(ctx, grace, "fetch __end_run__", func(_ string, c *clientEntry) bool { return run.ended[c.name] })
	if err != nil {
		return err
	}
	// A site that had tasks of the run and is not there for its end has
	// gone (killed mid-round, say) without the server hearing it leave.
	s.mu.Lock()
	for _, name := range missing {
		if run.took[name] && !run.contributed[name] {
			run.siteLost(name, fmt.Sprintf("gone: no result for its last task and no __end_run__ fetched within %s", grace))
		}
	}
	s.mu.Unlock()
	if err := s.waitAppsStopped(ctx, grace); err != nil {
		return err
	}
	s.admin.shutdownPolled(s.runNumberString())
	_, err = s.waitClients(ctx, grace, "fetch the shutdown request", func(tok string, _ *clientEntry) bool {
		polls, told := s.admin.delivered(tok, flare.TopicShutdown)
		return !polls || told
	})
	return err
}

// waitAppsStopped asks the clients that poll the admin channel for their
// status until none says its app still runs, or grace passes. NVFlare's
// client ends a run in a worker process that takes about a second after
// __end_run__ to exit; a shutdown arriving before makes the client talk to
// a dying worker ("Process communication exception").
func (s *Server) waitAppsStopped(ctx context.Context, grace time.Duration) error {
	deadline := time.Now().Add(grace)
	for {
		var polling []*clientEntry
		for _, c := range s.allClients() {
			if polls, _ := s.admin.delivered(c.token, flare.TopicShutdown); polls {
				polling = append(polling, c)
			}
		}
		if len(polling) == 0 {
			return nil
		}
		replies := s.requestWithin(polling, flare.NewAdminRequest(flare.TopicCheckStatus, s.runNumberString(), nil), min(2*time.Second, time.Until(deadline)))
		var running []string
		for i, c := range polling {
			var st struct {
				Status string `json:"status"`
			}
			if replies[i] == nil || json.Unmarshal(replies[i].Text, &st) != nil || st.Status == "started" || st.Status == "starting" {
				running = append(running, c.name)
			}
		}
		if len(running) == 0 {
			return nil
		}
		if !time.Now().Before(deadline) {
			s.logf("client(s) %s did not report their app stopped within %s", strings.Join(running, ", "), grace)
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(min(200*time.Millisecond, time.Until(deadline))):
		}
	}
}

// waitClients waits until done holds for every live client (s.mu held
// while it is called), or grace passes; then it names those it did not.
// It returns the names of the clients still not done when grace passed.
func (s *Server) waitClients(ctx context.Context, grace time.Duration, what string, done func(token string, c *clientEntry) bool) ([]string, error) {
	deadline := time.Now().Add(grace)
	for {
		s.mu.Lock()
		s.dropDead()
		var missing []string
		for tok, c := range s.clients {
			if !done(tok, c) {
				missing = append(missing, c.name)
			}
		}
		ch := s.changed
		s.mu.Unlock()
		if len(missing) == 0 {
			return nil, nil
		}
		if !time.Now().Before(deadline) {
			sort.Strings(missing)
			s.logf("client(s) %s did not %s within %s", strings.Join(missing, ", "), what, grace)
			return missing, nil
		}
		t := time.NewTimer(min(100*time.Millisecond, time.Until(deadline)))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-ch:
		case <-t.C:
		}
		t.Stop()
	}
}

// runNumberString is the run number as the admin channel sends it.
func (s *Server) runNumberString() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strconv.Itoa(s.runNumber)
}

func (s *Server) meta() flare.ServerMeta {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := flare.ServerMeta{Project: s.Project, Run: int64(max(s.runNumber, 0))}
	if s.run != nil {
		m.Round, m.NumRounds, m.Run = s.run.round, s.run.sag.NumRounds, int64(s.run.number)
	}
	return m
}

// refusal is an error the wire sends the client as a refusal of kind.
func refusal(kind flare.CallErrorKind, text string) error {
	return &flare.CallError{Kind: kind, Err: errors.New(text)}
}

// register logs a client in and gives it a token.
func (s *Server) register(r flare.Registration) (string, error) {
	if err := flare.CheckName("client name", r.Name); err != nil {
		return "", refusal(flare.Invalid, fmt.Sprintf("registration refused: %v", err))
	}
	if r.Project != "" {
		if err := flare.CheckName("project name", r.Project); err != nil {
			return "", refusal(flare.Invalid, fmt.Sprintf("registration of %s refused: %v", r.Name, err))
		}
	}
	// With mutual TLS the name must be the one the certificate was issued to.
	if r.Certified && r.CertName != r.Name {
		s.logf("refused registration of %s with a certificate for %q", r.Name, flare.LogCut(r.CertName))
		return "", refusal(flare.Denied, fmt.Sprintf("client name %q does not match its certificate (%q)", r.Name, flare.LogCut(r.CertName)))
	}
	tok := flare.NewUUID()
	s.mu.Lock()
	for t, c := range s.clients {
		if c.name == r.Name {
			s.forgetClient(t) // a restarted client takes a new token
		}
	}
	if len(s.clients) >= maxClients {
		s.dropDead()
	}
	if len(s.clients) >= maxClients {
		s.mu.Unlock()
		s.logf("refused registration of %s: %d clients registered already", r.Name, maxClients)
		return "", refusal(flare.Exhausted, fmt.Sprintf("registration refused: the server has %d clients already", maxClients))
	}
	s.clients[tok] = &clientEntry{name: r.Name, token: tok, lastSeen: time.Now()}
	s.notify()
	s.mu.Unlock()
	s.logf("client %s registered", r.Name)
	return tok, nil
}

// knownToken says whether a token is a registered client's.
func (s *Server) knownToken(token string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.clients[token]
	return ok
}

// client checks a token and marks the client alive.
func (s *Server) client(token string) (*clientEntry, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.clients[token]
	if !ok {
		return nil, refusal(flare.UnknownToken, "unknown token: register again")
	}
	c.lastSeen = time.Now()
	return c, nil
}

// quit logs a client out.
func (s *Server) quit(token string) {
	s.mu.Lock()
	if c, ok := s.clients[token]; ok {
		if r := s.run; r != nil && !r.finished && r.took[c.name] {
			r.siteLost(c.name, "left before the run ended")
		}
	}
	s.forgetClient(token)
	s.notify()
	s.mu.Unlock()
}

// tryAgainWait is the __wait_time__ (seconds) of a __try_again__: short,
// so clients pick up a new round quickly (NVFlare's own server says 2).
const tryAgainWait = 0.2

// specialTask is __try_again__ (with its __wait_time__) or __end_run__.
func specialTask(name string, wait float64) *flare.Task {
	sh := flare.NewShareable()
	sh.SetHeader(flare.HeaderCookieJar, &pickle.Dict{})
	sh.SetHeader(flare.HeaderTaskID, "")
	if wait > 0 {
		sh.Extra = append(sh.Extra, pickle.Item{Key: flare.HeaderWaitTime, Value: wait})
	}
	return &flare.Task{Name: name, Data: sh}
}

// getTask hands out the round's training task, __try_again__ while there
// is none for this client, and __end_run__ once when the run is over.
func (s *Server) getTask(token string) (*flare.Task, error) {
	c, err := s.client(token)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	run := s.run
	if run == nil {
		s.mu.Unlock()
		return s.tryAgain, nil
	}
	if run.finished {
		told := run.ended[c.name]
		run.ended[c.name] = true
		s.notify()
		s.mu.Unlock()
		if told && !s.oneJob {
			// Its app has ended; it waits for the next deploy and start.
			return s.tryAgain, nil
		}
		return s.endRunTask, nil
	}
	if run.acc == nil || run.contributed[c.name] || run.failed[c.name] {
		var t *crossTask
		if run.cross != nil && run.cross.queued != nil {
			t = run.cross.next(c.name)
		}
		if t != nil {
			run.took[c.name] = true
		}
		s.mu.Unlock()
		if t != nil {
			s.logf("client %s: task %s %s", c.name, t.name, t.owner)
			return t.task, nil
		}
		return s.tryAgain, nil
	}
	task, round := run.task, run.round
	run.took[c.name] = true
	s.mu.Unlock()
	s.logf("client %s: task %s round %d", c.name, task.Name, round+1)
	return task, nil
}

// submitUpdate takes a client's result and adds it to the round's weighted
// sum at once (results are not kept).
func (s *Server) submitUpdate(token string, result func() (*flare.Shareable, error)) (string, error) {
	c, err := s.client(token)
	if err != nil {
		return "", err
	}
	sh, err := result()
	if err != nil {
		s.logf("client %s: rejected result: %s", c.name, flare.LogSafeErr(err))
		return "", refusal(flare.Invalid, flare.LogSafeErr(err))
	}
	if sh == nil {
		return "", refusal(flare.Invalid, "contribution has no data")
	}
	var tid, cr, wf any
	if jar := sh.CookieJar(); jar != nil {
		tid, _ = jar.Get(flare.HeaderTaskID)
		cr, _ = jar.Get("contribution_round")
		wf, _ = jar.Get(flare.HeaderWorkflow)
	}
	if wf == workflowCrossSite {
		id, _ := tid.(string)
		return s.crossSiteResult(c, sh, id), nil
	}
	if rc := sh.ReturnCode(); rc != flare.RCOK {
		task := sh.HeaderString(flare.HeaderTaskName)
		s.mu.Lock()
		if run := s.run; run != nil && tid == run.taskID {
			task = fmt.Sprintf("%s (round %d/%d)", run.sag.TrainTaskName, run.round+1, run.sag.NumRounds)
		}
		why := fmt.Sprintf("task %s failed with %s%s", flare.LogSafe(task), flare.LogSafe(rc), taskErrorSuffix(sh))
		s.logf("client %s: %s", c.name, why)
		if run := s.run; run != nil && run.acc != nil && tid == run.taskID && !run.contributed[c.name] {
			run.failed[c.name] = true // not sent again this round
			run.siteLost(c.name, why)
			s.notify()
		}
		s.mu.Unlock()
		return "result ignored: " + flare.LogSafe(rc), nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	run := s.run
	if run == nil || run.acc == nil || tid != run.taskID || cr != int64(run.round) {
		s.logf("client %s: late or stale result ignored", c.name)
		return "late result ignored", nil
	}
	if run.contributed[c.name] {
		return "duplicate result ignored", nil
	}
	// A result that cannot be averaged into the model is refused whole:
	// one NaN or a wrong shape would spoil the global model of every site.
	refuse := func(err error) (string, error) {
		why := "result refused: " + flare.LogSafeErr(err)
		s.logf("client %s: task %s (round %d/%d): %s", c.name, run.sag.TrainTaskName, run.round+1, run.sag.NumRounds, why)
		run.failed[c.name] = true // not sent again this round
		run.siteLost(c.name, fmt.Sprintf("task %s (round %d/%d): %s", run.sag.TrainTaskName, run.round+1, run.sag.NumRounds, why))
		s.notify()
		return "", refusal(flare.Invalid, why)
	}
	if sh.DXO == nil || sh.DXO.Kind != flare.KindWeights {
		return refuse(fmt.Errorf("it holds %s, not WEIGHTS", dxoKind(sh)))
	}
	steps, present, err := resultWeight(sh.DXO)
	if err != nil {
		return refuse(err)
	}
	if !present {
		// NVFlare's aggregator weighs such a result 1, with a warning.
		s.logf("client %s: result has no %s; weighted 1", c.name, flare.MetaNumStepsCurrentRound)
	}
	if w, ok := run.sag.AggregationWeights[c.name]; ok {
		steps *= w // FedAvg's weight of the site
	}
	if err := run.acc.add(sh.DXO, steps); err != nil {
		return refuse(err)
	}
	run.curves.add(sh.DXO, steps)
	run.contributed[c.name] = true
	s.notify()
	s.logf("client %s: result for round %d accepted (%.0f steps)", c.name, run.round+1, steps)
	return "Received", nil
}

// siteLost records why a site dropped out of the run, the first reason
// only; s.mu must be held.
func (r *runState) siteLost(site, why string) {
	if r.lost == nil {
		r.lost = map[string]string{}
	}
	if _, ok := r.lost[site]; !ok {
		r.lost[site] = why
		r.lostOrder = append(r.lostOrder, site)
	}
}

// lostSites is "site: reason" for each lost site, and the number of sites
// handed a task of the run; s.mu must be held.
func (r *runState) lostSites() ([]string, int) {
	var out []string
	for _, site := range r.lostOrder {
		out = append(out, site+": "+r.lost[site])
	}
	sites := len(r.took)
	for site := range r.lost {
		if !r.took[site] {
			sites++
		}
	}
	return out, sites
}

// LostSites says which sites the current or last run lost, each as
// "site: reason" (a failed task with the task_error the site gave, a
// refused result, a site gone silent), and how many sites took part. A
// run that went on without a site still ends without error; whoever ran
// it decides (flarego server --job exits non-zero).
func (s *Server) LostSites() (lost []string, sites int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.run == nil {
		return nil, 0
	}
	return s.run.lostSites()
}

// taskErrorSuffix is ": REASON" when a failed result says why (the
// task_error header our client sets), else "".
func taskErrorSuffix(sh *flare.Shareable) string {
	if why := sh.HeaderString(flare.HeaderTaskError); why != "" {
		return ": " + flare.LogSafe(why)
	}
	return ""
}

// poll hands out the admin requests queued for the client.
func (s *Server) poll(token string) ([]*flare.AdminRequest, error) {
	if _, err := s.client(token); err != nil {
		return nil, err
	}
	reqs := s.admin.forClient(token, s.runNumberString())
	if len(reqs) > 0 {
		s.mu.Lock()
		s.notify()
		s.mu.Unlock()
	}
	return reqs, nil
}

// reply accepts a client's reply to an admin request.
func (s *Server) reply(token, requestID string, reply *flare.AdminReply) error {
	if _, err := s.client(token); err != nil {
		return err
	}
	if reply != nil {
		s.admin.reply(token, requestID, reply)
	}
	return nil
}
