package flare

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"math"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	_ "google.golang.org/grpc/encoding/gzip" // NVFlare 2.0 compresses with gzip
	grpcpeer "google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/flarego/flarego/persistor"
	"github.com/flarego/flarego/persistor/pickle"
	"github.com/flarego/flarego/proto/admin"
	"github.com/flarego/flarego/proto/fedlearn"
)

// MaxMessageBytes is NVFlare 2.0's gRPC message limit (2 GiB - 1).
const MaxMessageBytes = math.MaxInt32

// Server is the FL server running NVFlare's ScatterAndGather workflow with
// the full-model shareable generator and the NUM_STEPS-weighted in-time
// aggregator, storing each global model through a ModelPersistor. It serves
// fedlearn.FederatedTraining and admin.AdminCommunicating on one listener.
type Server struct {
	fedlearn.UnimplementedFederatedTrainingServer
	admin.UnimplementedAdminCommunicatingServer

	Project          string
	HeartBeatTimeout time.Duration
	Logf             func(format string, args ...any)
	// ServerOptions are added to the gRPC server's (e.g. TLS credentials).
	ServerOptions []grpc.ServerOption
	// EndGrace is how long Serve waits, after the last round, for live
	// clients to fetch __end_run__ (default 10 s).
	EndGrace time.Duration

	sag     *ScatterAndGatherArgs
	persist ModelPersistor

	mu          sync.Mutex
	changed     chan struct{} // closed and replaced on every state change
	clients     map[string]*clientEntry
	round       int
	taskID      string
	taskData    []byte
	acc         *accumulator
	contributed map[string]bool
	finished    bool
	ended       map[string]bool // clients told __end_run__
	grpc        *grpc.Server
	cancel      context.CancelFunc
	uploads     uploadGate
	admin       adminQueue
}

type clientEntry struct {
	name     string
	lastSeen time.Time
}

// NewServer makes a server for the job's config_fed_server.json, building
// its persistor through reg.
func NewServer(cfg *ServerConfig, reg *Registry) (*Server, error) {
	sag, err := cfg.ScatterAndGather()
	if err != nil {
		return nil, err
	}
	p, err := reg.checkServerComponents(cfg, sag)
	if err != nil {
		return nil, err
	}
	hb := time.Duration(cfg.Server.HeartBeatTimeout * float64(time.Second))
	if hb <= 0 {
		hb = 600 * time.Second
	}
	return &Server{Project: "example_project", HeartBeatTimeout: hb, sag: sag, persist: p, uploads: newUploadGate(4),
		changed: make(chan struct{}), clients: map[string]*clientEntry{}, ended: map[string]bool{}}, nil
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

// Serve runs the workflow and answers clients on lis until every round is
// done and every live client was told the run ended (or ctx is cancelled).
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	gs := grpc.NewServer(append([]grpc.ServerOption{grpc.MaxRecvMsgSize(MaxMessageBytes), grpc.MaxSendMsgSize(MaxMessageBytes),
		grpc.InTapHandle(s.uploads.acquire), grpc.StatsHandler(&s.uploads), grpc.ForceServerCodecV2(newTaskCodec())}, s.ServerOptions...)...)
	fedlearn.RegisterFederatedTrainingServer(gs, s)
	admin.RegisterAdminCommunicatingServer(gs, s)
	s.mu.Lock()
	s.grpc, s.cancel = gs, cancel
	s.mu.Unlock()
	serveErr := make(chan error, 1)
	go func() { serveErr <- gs.Serve(lis) }()
	err := s.workflow(ctx)
	if err == nil {
		grace := s.EndGrace
		if grace == 0 {
			grace = 10 * time.Second
		}
		err = s.waitEnded(ctx, grace)
	}
	gs.GracefulStop()
	if e := <-serveErr; err == nil && e != nil && !errors.Is(e, grpc.ErrServerStopped) {
		err = e
	}
	return err
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

func (s *Server) workflow(ctx context.Context) error {
	ck, err := s.persist.Load()
	if err != nil {
		return err
	}
	global := ck.Model
	for r := s.sag.StartRound; r < s.sag.NumRounds; r++ {
		start := time.Now()
		if err := s.startRound(r, global); err != nil {
			return err
		}
		s.logf("round %d/%d started: task %s to %d client(s)", r+1, s.sag.NumRounds, s.sag.TrainTaskName, s.liveClients())
		acc, n, err := s.gather(ctx, r)
		if err != nil {
			return err
		}
		if global, err = acc.result(); err != nil {
			return err
		}
		ck.Model = global
		if err := s.persist.Save(ck); err != nil {
			return fmt.Errorf("round %d: saving the global model: %w", r, err)
		}
		s.logf("round %d/%d done: aggregated %d result(s) (%.0f steps) in %.2f s; global model saved", r+1, s.sag.NumRounds, n, acc.total, time.Since(start).Seconds())
	}
	s.mu.Lock()
	s.finished = true
	s.notify()
	s.mu.Unlock()
	return nil
}

func (s *Server) startRound(r int, global *persistor.StateDict) error {
	taskID := newUUID()
	sh := NewShareable()
	sh.SetHeader(HeaderTaskName, s.sag.TrainTaskName)
	sh.SetHeader(HeaderTaskID, taskID)
	sh.SetHeader(HeaderCurrentRound, int64(r))
	sh.SetHeader(HeaderNumRounds, int64(s.sag.NumRounds))
	sh.SetHeader(HeaderCookieJar, &pickle.Dict{Items: []pickle.Item{
		{Key: HeaderWorkflow, Value: "scatter_and_gather"}, {Key: HeaderTaskID, Value: taskID}, {Key: "contribution_round", Value: int64(r)}}})
	sh.SetHeader(HeaderContentType, "DXO")
	sh.DXO = WeightsDXO(global, nil)
	data, err := EncodeShareable(sh)
	if err != nil {
		return fmt.Errorf("round %d: encoding the task: %w", r, err)
	}
	acc, err := newAccumulator(global)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.round, s.taskID, s.taskData, s.acc = r, taskID, data, acc
	s.contributed = map[string]bool{}
	s.notify()
	s.mu.Unlock()
	return nil
}

// gather waits for min_clients results, then up to
// wait_time_after_min_received more or until every live client answered.
func (s *Server) gather(ctx context.Context, r int) (*accumulator, int, error) {
	wait := time.Duration(s.sag.WaitTimeAfterMinReceived * float64(time.Second))
	var minAt time.Time
	started := time.Now()
	lastLog := started
	for {
		s.mu.Lock()
		s.dropDead()
		n, live := len(s.contributed), len(s.clients)
		allIn := n > 0 && n >= live
		ch := s.changed
		acc := s.acc
		s.mu.Unlock()
		if n >= s.sag.MinClients {
			if minAt.IsZero() {
				minAt = time.Now()
			}
			if allIn || time.Since(minAt) >= wait {
				s.mu.Lock()
				s.acc = nil // late results for this round are refused
				s.mu.Unlock()
				return acc, n, nil
			}
		}
		if s.sag.TrainTimeout > 0 && time.Since(started) > time.Duration(s.sag.TrainTimeout*float64(time.Second)) {
			return nil, 0, fmt.Errorf("round %d: %d of min_clients %d results within train_timeout %.0f s", r, n, s.sag.MinClients, s.sag.TrainTimeout)
		}
		if time.Since(lastLog) > 30*time.Second {
			s.logf("round %d: waiting: %d of %d results needed, %d live client(s)", r+1, n, s.sag.MinClients, live)
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

// dropDead forgets clients silent for longer than the heart-beat timeout;
// s.mu must be held.
func (s *Server) dropDead() {
	for tok, c := range s.clients {
		if time.Since(c.lastSeen) > s.HeartBeatTimeout {
			s.logf("client %s: no heartbeat for %s, dropped", c.name, s.HeartBeatTimeout)
			delete(s.clients, tok)
		}
	}
}

func (s *Server) liveClients() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.clients)
}

func (s *Server) waitEnded(ctx context.Context, grace time.Duration) error {
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		s.mu.Lock()
		all := true
		for _, c := range s.clients {
			if !s.ended[c.name] {
				all = false
			}
		}
		ch := s.changed
		s.mu.Unlock()
		if all {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}

func newUUID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func (s *Server) meta() *fedlearn.MetaData {
	s.mu.Lock()
	defer s.mu.Unlock()
	return &fedlearn.MetaData{Project: &fedlearn.MetaData_Project{Name: s.Project}, CurrentRound: int64(s.round), NumRounds: int64(s.sag.NumRounds), RunNumber: 1}
}

// Register logs a client in and gives it a token.
func (s *Server) Register(ctx context.Context, req *fedlearn.ClientLogin) (*fedlearn.FederatedSummary, error) {
	if req.ClientName == "" {
		return nil, status.Error(codes.InvalidArgument, "client_name is empty")
	}
	// With mutual TLS the name must be the one the certificate was issued to.
	if p, ok := grpcpeer.FromContext(ctx); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
			if cn := ti.State.PeerCertificates[0].Subject.CommonName; cn != req.ClientName {
				s.logf("refused registration of %q with a certificate for %q", req.ClientName, cn)
				return nil, status.Errorf(codes.PermissionDenied, "client name %q does not match its certificate (%q)", req.ClientName, cn)
			}
		}
	}
	tok := newUUID()
	s.mu.Lock()
	for t, c := range s.clients {
		if c.name == req.ClientName {
			delete(s.clients, t) // a restarted client takes a new token
		}
	}
	s.clients[tok] = &clientEntry{name: req.ClientName, lastSeen: time.Now()}
	s.notify()
	s.mu.Unlock()
	s.logf("client %s registered", req.ClientName)
	return &fedlearn.FederatedSummary{Comment: "New client registered", Token: tok, Meta: s.meta()}, nil
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
	delete(s.clients, req.Token)
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
	return EncodeFLContext(&FLContext{Props: []Prop{{"__run_num__", int64(1), 1}, {"__identity_name__", s.Project, 1}}})
}

// GetTask hands out the round's training task, __try_again__ while there
// is none for this client, and __end_run__ when the run is over.
func (s *Server) GetTask(ctx context.Context, req *fedlearn.ClientState) (*fedlearn.CurrentTask, error) {
	c, err := s.client(req.Token)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	if s.finished {
		s.ended[c.name] = true
		s.notify()
		s.mu.Unlock()
		return s.special(TaskEndRun, 0)
	}
	if s.acc == nil || s.contributed[c.name] {
		s.mu.Unlock()
		return s.special(TaskTryAgain, tryAgainWait)
	}
	data, round, task := s.taskData, s.round, s.sag.TrainTaskName
	s.mu.Unlock()
	ctxData, err := s.flContext()
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	s.logf("client %s: task %s round %d", c.name, task, round+1)
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
		s.logf("client %s: rejected result: %v", c.name, err)
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if rc := sh.ReturnCode(); rc != RCOK {
		s.logf("client %s: task failed with %s", c.name, rc)
		return &fedlearn.FederatedSummary{Comment: "result ignored: " + rc}, nil
	}
	jar := sh.CookieJar()
	var tid any
	var cr any
	if jar != nil {
		tid, _ = jar.Get(HeaderTaskID)
		cr, _ = jar.Get("contribution_round")
	}
	if sh.DXO == nil || sh.DXO.Kind != KindWeights {
		return nil, status.Error(codes.InvalidArgument, "result is not a WEIGHTS DXO")
	}
	steps, err := sh.DXO.NumSteps()
	if err != nil {
		// NVFlare's aggregator weighs such a result 1, with a warning.
		s.logf("client %s: result has no %s; weighted 1", c.name, MetaNumStepsCurrentRound)
		steps = 1
	}
	if steps <= 0 {
		return nil, status.Errorf(codes.InvalidArgument, "result has %s = %d", MetaNumStepsCurrentRound, steps)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.acc == nil || tid != s.taskID || cr != int64(s.round) {
		s.logf("client %s: late or stale result ignored", c.name)
		return &fedlearn.FederatedSummary{Comment: "late result ignored"}, nil
	}
	if s.contributed[c.name] {
		return &fedlearn.FederatedSummary{Comment: "duplicate result ignored"}, nil
	}
	if err := s.acc.add(sh.DXO, float64(steps)); err != nil {
		s.logf("client %s: rejected result: %v", c.name, err)
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	s.contributed[c.name] = true
	s.notify()
	s.logf("client %s: result for round %d accepted (%d steps)", c.name, s.round+1, steps)
	return &fedlearn.FederatedSummary{Comment: "Received"}, nil
}

// Retrieve answers the admin channel's poll (the client names itself by
// its token, as NVFlare's does): with ServeAppTo, a new client is sent the
// run number, the app and the start request.
func (s *Server) Retrieve(ctx context.Context, req *admin.Client) (*admin.Messages, error) {
	if _, err := s.client(req.ClientName); err != nil {
		return nil, err
	}
	return &admin.Messages{Message: s.admin.forClient(req.ClientName)}, nil
}

// SendReply accepts a client's admin reply.
func (s *Server) SendReply(ctx context.Context, req *admin.Reply) (*admin.Empty, error) {
	return &admin.Empty{}, nil
}
