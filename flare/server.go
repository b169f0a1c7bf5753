package flare

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	_ "google.golang.org/grpc/encoding/gzip" // NVFlare 2.0 compresses with gzip
	"google.golang.org/grpc/keepalive"
	grpcpeer "google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/flarego/flarego/persistor"
	"github.com/flarego/flarego/persistor/pickle"
	"github.com/flarego/flarego/proto/admin"
	"github.com/flarego/flarego/proto/fedlearn"
)

// MaxMessageBytes is NVFlare 2.0's gRPC message limit (2 GiB - 1). The
// server sends up to it; what it receives is bounded per method (limits.go).
const MaxMessageBytes = math.MaxInt32

// Connection limits of the server (see the README's Security section).
const (
	// maxStreamsPerConn bounds the calls one connection has open at once
	// (our client has four at most: heartbeat, admin poll, task, result).
	maxStreamsPerConn = 32
	// maxHeaderBytes bounds a call's metadata (gRPC's default is 16 MiB).
	maxHeaderBytes = 64 << 10
	// maxClients bounds the registered clients: a registration is
	// unauthenticated without TLS, and each one is kept until its
	// heart-beat timeout.
	maxClients = 1024
	// stopGrace is how long stopping waits for calls in flight.
	stopGrace = 5 * time.Second
)

// Server is the FL server running NVFlare's ScatterAndGather workflow with
// the full-model shareable generator and the NUM_STEPS-weighted in-time
// aggregator, storing each global model through a ModelPersistor. It serves
// fedlearn.FederatedTraining and admin.AdminCommunicating on one listener.
//
// A server from NewServer runs its one job and stops; one from
// NewAdminServer waits for an operator's admin console (Console) to
// upload, deploy and start apps, one run after another, until shutdown.
type Server struct {
	fedlearn.UnimplementedFederatedTrainingServer
	admin.UnimplementedAdminCommunicatingServer

	Project          string
	HeartBeatTimeout time.Duration
	Logf             func(format string, args ...any)
	// ServerOptions are added to the gRPC server's (e.g. TLS credentials).
	ServerOptions []grpc.ServerOption
	// OutputDir, for a server without a console workspace, receives
	// cross-site evaluation results (CROSS_VAL_DIR/cross_val_results.json).
	OutputDir string
	// EndGrace is how long a one-job server waits, after the last round,
	// for live clients to fetch __end_run__ (default 10 s).
	EndGrace time.Duration

	mu        sync.Mutex
	changed   chan struct{} // closed and replaced on every state change
	clients   map[string]*clientEntry
	run       *runState // the current or last run; nil before the first
	runNumber int       // set by the admin's set_run_number; -1 before
	oneJob    bool
	ctx       context.Context
	grpc      *grpc.Server
	cancel    context.CancelFunc
	uploads   uploadGate
	admin     adminQueue
	console   consoleState
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
	sag         *ScatterAndGatherArgs
	persist     ModelPersistor
	status      string // starting, started, stopped
	round       int
	taskID      string
	taskData    []byte
	acc         *accumulator
	contributed map[string]bool
	failed      map[string]bool // clients whose result this round was an error (e.g. abort_task)
	finished    bool
	ended       map[string]bool   // clients told __end_run__
	took        map[string]bool   // clients handed a task of this run
	lost        map[string]string // site → why it dropped out of the run
	lostOrder   []string          // the sites of lost, in the order they were lost
	cross       *crossSite        // CrossSiteModelEval after the rounds, or nil
	cancel      context.CancelFunc
	err         error
}

// Machine states as NVFlare's check_status shows them.
const (
	statusStarting = "starting"
	statusStarted  = "started"
	statusStopped  = "stopped"
)

func newRun(cfg *ServerConfig, reg *Registry, number int, app string) (*runState, error) {
	sag, err := cfg.ScatterAndGather()
	if err != nil {
		return nil, err
	}
	p, err := reg.checkServerComponents(cfg, sag)
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

func heartBeat(cfg *ServerConfig) time.Duration {
	if cfg != nil && cfg.Server.HeartBeatTimeout > 0 {
		return time.Duration(cfg.Server.HeartBeatTimeout * float64(time.Second))
	}
	return 600 * time.Second
}

// NewServer makes a server that runs the job of config_fed_server.json
// once (run number 1), building its persistor through reg.
func NewServer(cfg *ServerConfig, reg *Registry) (*Server, error) {
	r, err := newRun(cfg, reg, 1, "")
	if err != nil {
		return nil, err
	}
	s := NewAdminServer()
	s.HeartBeatTimeout, s.run, s.runNumber, s.oneJob = heartBeat(cfg), r, 1, true
	return s, nil
}

// NewAdminServer makes a server without an app: its Console deploys and
// starts them.
func NewAdminServer() *Server {
	return &Server{Project: "example_project", HeartBeatTimeout: 600 * time.Second, uploads: newUploadGate(4),
		changed: make(chan struct{}), clients: map[string]*clientEntry{}, runNumber: -1}
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

// Serve answers clients on lis. A one-job server returns once every round
// is done and every live client was told the run ended; an admin server
// when its console shuts it down. Both stop when ctx is cancelled.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.uploads.known = s.knownToken
	gs := grpc.NewServer(append([]grpc.ServerOption{
		// Received messages are bounded by the largest a method may get (a
		// SubmitUpdate); the codec holds each message to its own limit.
		grpc.MaxRecvMsgSize(maxContributionBytes()), grpc.MaxSendMsgSize(MaxMessageBytes),
		//lint:ignore SA1019 the only server-side hook that keeps gRPC from decompressing before the codec knows the method
		grpc.RPCDecompressor(gzipPassThrough{}),
		grpc.InTapHandle(s.uploads.acquire), grpc.StatsHandler(&s.uploads), grpc.ForceServerCodecV2(newTaskCodec()),
		grpc.MaxConcurrentStreams(maxStreamsPerConn), grpc.MaxHeaderListSize(maxHeaderBytes),
		grpc.ConnectionTimeout(20 * time.Second),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		// Idle connections are closed (clients reconnect on their own).
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: 5 * time.Minute, Time: time.Minute, Timeout: 20 * time.Second}),
	}, s.ServerOptions...)...)
	fedlearn.RegisterFederatedTrainingServer(gs, s)
	admin.RegisterAdminCommunicatingServer(gs, s)
	s.mu.Lock()
	s.grpc, s.cancel, s.ctx = gs, cancel, ctx
	r, oneJob := s.run, s.oneJob
	s.mu.Unlock()
	serveErr := make(chan error, 1)
	go func() { serveErr <- gs.Serve(newLimitListener(lis, maxConns, &s.uploads.conns)) }()
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
		if !s.console.shutdown {
			err = ctx.Err()
		}
		s.mu.Unlock()
	}
	stopGracefully(gs)
	if e := <-serveErr; err == nil && e != nil && !errors.Is(e, grpc.ErrServerStopped) {
		err = e
	}
	return err
}

// stopGracefully lets the calls in flight end, for stopGrace at most: a
// peer that keeps a stream open must not keep the server from exiting.
func stopGracefully(gs *grpc.Server) {
	done := make(chan struct{})
	go func() { gs.GracefulStop(); close(done) }()
	t := time.NewTimer(stopGrace)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		gs.Stop()
		<-done
	}
}

// Stop ends Serve at once.
func (s *Server) Stop() {
	s.mu.Lock()
	gs, cancel := s.grpc, s.cancel
	s.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	if gs != nil {
		gs.Stop()
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
	ck, err := run.persist.Load()
	if err != nil {
		return err
	}
	global := ck.Model
	sag := run.sag
	for r := sag.StartRound; r < sag.NumRounds; r++ {
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
		if err := run.persist.Save(ck); err != nil {
			return fmt.Errorf("round %d/%d: saving the global model: %w", r+1, sag.NumRounds, err)
		}
		s.logf("round %d/%d done: aggregated %d result(s) (%.0f steps) in %.2f s; global model saved", r+1, sag.NumRounds, n, acc.total, time.Since(start).Seconds())
	}
	if run.cross != nil {
		return s.crossSiteEval(ctx, run, global)
	}
	return nil
}

func (s *Server) startRound(run *runState, r int, global *persistor.StateDict) error {
	taskID := newUUID()
	sh := NewShareable()
	sh.SetHeader(HeaderTaskName, run.sag.TrainTaskName)
	sh.SetHeader(HeaderTaskID, taskID)
	sh.SetHeader(HeaderCurrentRound, int64(r))
	sh.SetHeader(HeaderNumRounds, int64(run.sag.NumRounds))
	sh.SetHeader(HeaderCookieJar, &pickle.Dict{Items: []pickle.Item{
		{Key: HeaderWorkflow, Value: "scatter_and_gather"}, {Key: HeaderTaskID, Value: taskID}, {Key: "contribution_round", Value: int64(r)}}})
	sh.SetHeader(HeaderContentType, "DXO")
	sh.DXO = WeightsDXO(global, nil)
	data, err := EncodeShareable(sh)
	if err != nil {
		return fmt.Errorf("round %d/%d: encoding the task: %w", r+1, run.sag.NumRounds, err)
	}
	acc, err := newAccumulator(global)
	if err != nil {
		return err
	}
	s.mu.Lock()
	run.round, run.taskID, run.taskData, run.acc = r, taskID, data, acc
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
		n, failed, live := len(run.contributed), len(run.failed), len(s.clients)
		allIn := n > 0 && n+failed >= live
		ch := s.changed
		acc := run.acc
		s.mu.Unlock()
		if n >= sag.MinClients {
			if minAt.IsZero() {
				minAt = time.Now()
			}
			if allIn || time.Since(minAt) >= wait {
				s.mu.Lock()
				run.acc = nil // late results for this round are refused
				s.mu.Unlock()
				return acc, n, nil
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
	err := s.waitClients(ctx, grace, "fetch __end_run__", func(_ string, c *clientEntry) bool { return run.ended[c.name] })
	if err != nil {
		return err
	}
	if err := s.waitAppsStopped(ctx, grace); err != nil {
		return err
	}
	s.admin.shutdownPolled(s.runNumberString())
	return s.waitClients(ctx, grace, "fetch the shutdown request", func(tok string, _ *clientEntry) bool {
		polls, told := s.admin.delivered(tok, TopicShutdown)
		return !polls || told
	})
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
			if polls, _ := s.admin.delivered(c.token, TopicShutdown); polls {
				polling = append(polling, c)
			}
		}
		if len(polling) == 0 {
			return nil
		}
		replies := s.requestWithin(polling, newAdminMessage(TopicCheckStatus, s.runNumberString(), nil), min(2*time.Second, time.Until(deadline)))
		var running []string
		for i, c := range polling {
			var st struct {
				Status string `json:"status"`
			}
			if replies[i] == nil || json.Unmarshal(replies[i].Body, &st) != nil || st.Status == "started" || st.Status == "starting" {
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
func (s *Server) waitClients(ctx context.Context, grace time.Duration, what string, done func(token string, c *clientEntry) bool) error {
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
			return nil
		}
		if !time.Now().Before(deadline) {
			sort.Strings(missing)
			s.logf("client(s) %s did not %s within %s", strings.Join(missing, ", "), what, grace)
			return nil
		}
		t := time.NewTimer(min(100*time.Millisecond, time.Until(deadline)))
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-ch:
		case <-t.C:
		}
		t.Stop()
	}
}

func newUUID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// runNumberString is the run number as the admin channel sends it.
func (s *Server) runNumberString() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strconv.Itoa(s.runNumber)
}

func (s *Server) meta() *fedlearn.MetaData {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := &fedlearn.MetaData{Project: &fedlearn.MetaData_Project{Name: s.Project}, RunNumber: int64(max(s.runNumber, 0))}
	if s.run != nil {
		m.CurrentRound, m.NumRounds, m.RunNumber = int64(s.run.round), int64(s.run.sag.NumRounds), int64(s.run.number)
	}
	return m
}

// Register logs a client in and gives it a token.
func (s *Server) Register(ctx context.Context, req *fedlearn.ClientLogin) (*fedlearn.FederatedSummary, error) {
	if err := CheckName("client name", req.ClientName); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "registration refused: %v", err)
	}
	if p := req.GetMeta().GetProject().GetName(); p != "" {
		if err := CheckName("project name", p); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "registration of %s refused: %v", req.ClientName, err)
		}
	}
	// With mutual TLS the name must be the one the certificate was issued to.
	if p, ok := grpcpeer.FromContext(ctx); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
			if cn := ti.State.PeerCertificates[0].Subject.CommonName; cn != req.ClientName {
				s.logf("refused registration of %s with a certificate for %q", req.ClientName, logCut(cn))
				return nil, status.Errorf(codes.PermissionDenied, "client name %q does not match its certificate (%q)", req.ClientName, logCut(cn))
			}
		}
	}
	tok := newUUID()
	s.mu.Lock()
	for t, c := range s.clients {
		if c.name == req.ClientName {
			s.forgetClient(t) // a restarted client takes a new token
		}
	}
	if len(s.clients) >= maxClients {
		s.dropDead()
	}
	if len(s.clients) >= maxClients {
		s.mu.Unlock()
		s.logf("refused registration of %s: %d clients registered already", req.ClientName, maxClients)
		return nil, status.Errorf(codes.ResourceExhausted, "registration refused: the server has %d clients already", maxClients)
	}
	s.clients[tok] = &clientEntry{name: req.ClientName, token: tok, lastSeen: time.Now()}
	s.notify()
	s.mu.Unlock()
	s.logf("client %s registered", req.ClientName)
	return &fedlearn.FederatedSummary{Comment: "New client registered", Token: tok, Meta: s.meta()}, nil
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
		return nil, status.Error(codes.Unauthenticated, "unknown token: register again")
	}
	c.lastSeen = time.Now()
	return c, nil
}

// Heartbeat keeps a client alive.
func (s *Server) Heartbeat(ctx context.Context, req *fedlearn.Token) (*fedlearn.FederatedSummary, error) {
	if _, err := s.client(req.Token); err != nil {
		return nil, err
	}
	return &fedlearn.FederatedSummary{}, nil
}

// Quit logs a client out.
func (s *Server) Quit(ctx context.Context, req *fedlearn.ClientState) (*fedlearn.FederatedSummary, error) {
	s.mu.Lock()
	if c, ok := s.clients[req.Token]; ok {
		if r := s.run; r != nil && !r.finished && r.took[c.name] {
			r.siteLost(c.name, "left before the run ended")
		}
	}
	s.forgetClient(req.Token)
	s.notify()
	s.mu.Unlock()
	return &fedlearn.FederatedSummary{Comment: "Removed client"}, nil
}

// tryAgainWait is the __wait_time__ (seconds) of a __try_again__: short,
// so clients pick up a new round quickly (NVFlare's own server says 2).
const tryAgainWait = 0.2

func (s *Server) special(task string, wait float64) (*fedlearn.CurrentTask, error) {
	sh := NewShareable()
	sh.SetHeader(HeaderCookieJar, &pickle.Dict{})
	sh.SetHeader(HeaderTaskID, "")
	if wait > 0 {
		sh.Extra = append(sh.Extra, pickle.Item{Key: HeaderWaitTime, Value: wait})
	}
	data, err := EncodeShareable(sh)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	ctxData, err := s.flContext()
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	// NVFlare's client unpickles fl_context from every answer, special ones included.
	return &fedlearn.CurrentTask{Meta: s.meta(), TaskName: task, Data: &fedlearn.ModelData{Params: map[string]*fedlearn.NDArray{
		"data": {Ndarray: data}, "fl_context": {Ndarray: ctxData}}}}, nil
}

// flContext is the server's public FLContext as it travels with tasks.
func (s *Server) flContext() ([]byte, error) {
	m := s.meta()
	return EncodeFLContext(&FLContext{Props: []Prop{{"__run_num__", m.RunNumber, 1}, {"__identity_name__", s.Project, 1}}})
}

// GetTask hands out the round's training task, __try_again__ while there
// is none for this client, and __end_run__ once when the run is over.
func (s *Server) GetTask(ctx context.Context, req *fedlearn.ClientState) (*fedlearn.CurrentTask, error) {
	c, err := s.client(req.Token)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	run := s.run
	if run == nil {
		s.mu.Unlock()
		return s.special(TaskTryAgain, tryAgainWait)
	}
	if run.finished {
		told := run.ended[c.name]
		run.ended[c.name] = true
		s.notify()
		s.mu.Unlock()
		if told && !s.oneJob {
			// Its app has ended; it waits for the next deploy and start.
			return s.special(TaskTryAgain, tryAgainWait)
		}
		return s.special(TaskEndRun, 0)
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
			return s.task(t.name, t.data)
		}
		return s.special(TaskTryAgain, tryAgainWait)
	}
	data, round, task := run.taskData, run.round, run.sag.TrainTaskName
	run.took[c.name] = true
	s.mu.Unlock()
	s.logf("client %s: task %s round %d", c.name, task, round+1)
	return s.task(task, data)
}

// task answers GetTask with a task and the server's FLContext.
func (s *Server) task(task string, data []byte) (*fedlearn.CurrentTask, error) {
	ctxData, err := s.flContext()
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &fedlearn.CurrentTask{Meta: s.meta(), TaskName: task, Data: &fedlearn.ModelData{Params: map[string]*fedlearn.NDArray{
		"data": {Ndarray: data}, "fl_context": {Ndarray: ctxData}}}}, nil
}

// SubmitUpdate takes a client's result and adds it to the round's weighted
// sum at once (results are not kept).
func (s *Server) SubmitUpdate(ctx context.Context, req *fedlearn.Contribution) (*fedlearn.FederatedSummary, error) {
	if req.Client == nil {
		return nil, status.Error(codes.InvalidArgument, "no client state")
	}
	c, err := s.client(req.Client.Token)
	if err != nil {
		return nil, err
	}
	if req.Data == nil || req.Data.Params["data"] == nil {
		return nil, status.Error(codes.InvalidArgument, "contribution has no data")
	}
	sh, err := DecodeShareable(req.Data.Params["data"].Ndarray)
	if err != nil {
		s.logf("client %s: rejected result: %s", c.name, logSafeErr(err))
		return nil, status.Error(codes.InvalidArgument, logSafeErr(err))
	}
	var tid, cr, wf any
	if jar := sh.CookieJar(); jar != nil {
		tid, _ = jar.Get(HeaderTaskID)
		cr, _ = jar.Get("contribution_round")
		wf, _ = jar.Get(HeaderWorkflow)
	}
	if wf == workflowCrossSite {
		id, _ := tid.(string)
		return &fedlearn.FederatedSummary{Comment: s.crossSiteResult(c, sh, id)}, nil
	}
	if rc := sh.ReturnCode(); rc != RCOK {
		task := sh.HeaderString(HeaderTaskName)
		s.mu.Lock()
		if run := s.run; run != nil && tid == run.taskID {
			task = fmt.Sprintf("%s (round %d/%d)", run.sag.TrainTaskName, run.round+1, run.sag.NumRounds)
		}
		why := fmt.Sprintf("task %s failed with %s%s", LogSafe(task), LogSafe(rc), taskErrorSuffix(sh))
		s.logf("client %s: %s", c.name, why)
		if run := s.run; run != nil && run.acc != nil && tid == run.taskID && !run.contributed[c.name] {
			run.failed[c.name] = true // not sent again this round
			run.siteLost(c.name, why)
			s.notify()
		}
		s.mu.Unlock()
		return &fedlearn.FederatedSummary{Comment: "result ignored: " + LogSafe(rc)}, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	run := s.run
	if run == nil || run.acc == nil || tid != run.taskID || cr != int64(run.round) {
		s.logf("client %s: late or stale result ignored", c.name)
		return &fedlearn.FederatedSummary{Comment: "late result ignored"}, nil
	}
	if run.contributed[c.name] {
		return &fedlearn.FederatedSummary{Comment: "duplicate result ignored"}, nil
	}
	// A result that cannot be averaged into the model is refused whole:
	// one NaN or a wrong shape would spoil the global model of every site.
	refuse := func(err error) (*fedlearn.FederatedSummary, error) {
		why := "result refused: " + logSafeErr(err)
		s.logf("client %s: task %s (round %d/%d): %s", c.name, run.sag.TrainTaskName, run.round+1, run.sag.NumRounds, why)
		run.failed[c.name] = true // not sent again this round
		run.siteLost(c.name, fmt.Sprintf("task %s (round %d/%d): %s", run.sag.TrainTaskName, run.round+1, run.sag.NumRounds, why))
		s.notify()
		return nil, status.Error(codes.InvalidArgument, why)
	}
	if sh.DXO == nil || sh.DXO.Kind != KindWeights {
		return refuse(fmt.Errorf("it holds %s, not WEIGHTS", dxoKind(sh)))
	}
	steps, present, err := resultWeight(sh.DXO)
	if err != nil {
		return refuse(err)
	}
	if !present {
		// NVFlare's aggregator weighs such a result 1, with a warning.
		s.logf("client %s: result has no %s; weighted 1", c.name, MetaNumStepsCurrentRound)
	}
	if err := run.acc.add(sh.DXO, steps); err != nil {
		return refuse(err)
	}
	run.contributed[c.name] = true
	s.notify()
	s.logf("client %s: result for round %d accepted (%.0f steps)", c.name, run.round+1, steps)
	return &fedlearn.FederatedSummary{Comment: "Received"}, nil
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
func taskErrorSuffix(sh *Shareable) string {
	if why := sh.HeaderString(HeaderTaskError); why != "" {
		return ": " + LogSafe(why)
	}
	return ""
}

// Retrieve answers the admin channel's poll (the client names itself by
// its token, as NVFlare's does) with the requests queued for it.
func (s *Server) Retrieve(ctx context.Context, req *admin.Client) (*admin.Messages, error) {
	if _, err := s.client(req.ClientName); err != nil {
		return nil, err
	}
	msgs := s.admin.forClient(req.ClientName, s.runNumberString())
	if len(msgs) > 0 {
		s.mu.Lock()
		s.notify()
		s.mu.Unlock()
	}
	return &admin.Messages{Message: msgs}, nil
}

// SendReply accepts a client's reply to an admin request.
func (s *Server) SendReply(ctx context.Context, req *admin.Reply) (*admin.Empty, error) {
	if _, err := s.client(req.ClientName); err != nil {
		return nil, err
	}
	if req.Message != nil {
		s.admin.reply(req.ClientName, req.Message)
	}
	return &admin.Empty{}, nil
}
