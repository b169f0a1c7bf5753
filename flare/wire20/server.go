package wire20

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	_ "google.golang.org/grpc/encoding/gzip" // NVFlare 2.0 compresses with gzip
	"google.golang.org/grpc/keepalive"
	grpcpeer "google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/proto/admin"
	"github.com/flarego/flarego/proto/fedlearn"
)

// Connection limits of the server (see the README's Security section).
const (
	// maxStreamsPerConn bounds the calls one connection has open at once
	// (our client has four at most: heartbeat, admin poll, task, result).
	maxStreamsPerConn = 32
	// maxHeaderBytes bounds a call's metadata (gRPC's default is 16 MiB).
	maxHeaderBytes = 64 << 10
	// stopGrace is how long stopping waits for calls in flight.
	stopGrace = 5 * time.Second
)

// ServerWire is NVFlare 2.0's wire for a server runtime (a
// flare.ServerWire): it serves fedlearn.FederatedTraining and
// admin.AdminCommunicating on one listener, behind the gate (gate.go) and
// the per-message limits (limits.go, taskcodec.go), and turns each call
// into one of the handler's.
type ServerWire struct {
	// ServerOptions are added to the gRPC server's own.
	ServerOptions []grpc.ServerOption
	// TLS, when set, is the server's TLS configuration
	// (flare.StartupKit.ServerTLS).
	TLS *tls.Config

	// tune, if set, adjusts the gate before serving (tests).
	tune func(*uploadGate)
}

// Serve serves h on lis until ctx ends (flare.ServerWire).
func (w ServerWire) Serve(ctx context.Context, lis net.Listener, h flare.ServerHandler) error {
	g := newUploadGate()
	g.known, g.model = h.KnownToken, h.ResultModel
	if w.tune != nil {
		w.tune(g)
	}
	gs := grpc.NewServer(append([]grpc.ServerOption{
		// Received messages are bounded by the largest a method may get (a
		// SubmitUpdate); the codec holds each message to its own limit.
		grpc.MaxRecvMsgSize(maxContributionBytes()), grpc.MaxSendMsgSize(MaxMessageBytes),
		//lint:ignore SA1019 the only server-side hook that keeps gRPC from decompressing before the codec knows the method
		grpc.RPCDecompressor(gzipPassThrough{}),
		grpc.InTapHandle(g.acquire), grpc.StatsHandler(g), grpc.ForceServerCodecV2(newTaskCodec(g.contributionLimit)),
		grpc.MaxConcurrentStreams(maxStreamsPerConn), grpc.MaxHeaderListSize(maxHeaderBytes),
		grpc.ConnectionTimeout(20 * time.Second),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		// Idle connections are closed (clients reconnect on their own).
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: 5 * time.Minute, Time: time.Minute, Timeout: 20 * time.Second}),
	}, w.options()...)...)
	fedlearn.RegisterFederatedTrainingServer(gs, fedService{h: h})
	admin.RegisterAdminCommunicatingServer(gs, adminService{h: h})
	serveErr := make(chan error, 1)
	go func() { serveErr <- gs.Serve(newLimitListener(lis, maxConns, &g.conns)) }()
	<-ctx.Done()
	if errors.Is(context.Cause(ctx), flare.ErrStopNow) {
		gs.Stop()
	} else {
		stopGracefully(gs)
	}
	if err := <-serveErr; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
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

// Prepare encodes t's Shareable once for all the clients that get it
// (flare.ServerWire).
func (ServerWire) Prepare(t *flare.Task) error {
	_, err := taskData(t)
	return err
}

type memoKey struct{}

// encodedTask is a task's Shareable as a pickle, made once.
type encodedTask struct {
	once sync.Once
	data []byte
	err  error
}

// taskData is t's Shareable as a pickle, kept in t.Memo: every client of
// a round gets the same bytes, which taskCodec writes without copying.
func taskData(t *flare.Task) ([]byte, error) {
	v, ok := t.Memo.Load(memoKey{})
	if !ok {
		v, _ = t.Memo.LoadOrStore(memoKey{}, &encodedTask{})
	}
	e := v.(*encodedTask)
	e.once.Do(func() { e.data, e.err = EncodeShareable(t.Data) })
	return e.data, e.err
}

// statusOf is a handler's error as gRPC sends it: its kind's code and its
// text; an error without a kind is Internal.
func statusOf(err error) error {
	if err == nil {
		return nil
	}
	var ce *flare.CallError
	if !errors.As(err, &ce) {
		return status.Error(codes.Internal, err.Error())
	}
	code := codes.FailedPrecondition
	switch ce.Kind {
	case flare.Unavailable:
		code = codes.Unavailable
	case flare.TimedOut:
		code = codes.DeadlineExceeded
	case flare.Canceled:
		code = codes.Canceled
	case flare.UnknownToken:
		code = codes.Unauthenticated
	case flare.Invalid:
		code = codes.InvalidArgument
	case flare.Denied:
		code = codes.PermissionDenied
	case flare.Exhausted:
		code = codes.ResourceExhausted
	}
	return status.Error(code, err.Error())
}

func serverMeta(m flare.ServerMeta) *fedlearn.MetaData {
	return &fedlearn.MetaData{Project: &fedlearn.MetaData_Project{Name: m.Project}, RunNumber: m.Run,
		CurrentRound: int64(m.Round), NumRounds: int64(m.NumRounds)}
}

// serverContext is the server's public FLContext as it travels with
// every task (NVFlare's client unpickles it even from __try_again__).
func serverContext(m flare.ServerMeta) ([]byte, error) {
	return EncodeFLContext(&flare.FLContext{Props: []flare.Prop{{Name: "__run_num__", Value: m.Run, Mask: 1}, {Name: "__identity_name__", Value: m.Project, Mask: 1}}})
}

// fedService and adminService are the gRPC services the wire registers:
// each call becomes one of the handler's.
type fedService struct {
	fedlearn.UnimplementedFederatedTrainingServer
	h flare.ServerHandler
}

func (f fedService) Register(ctx context.Context, req *fedlearn.ClientLogin) (*fedlearn.FederatedSummary, error) {
	r := flare.Registration{Name: req.ClientName, Project: req.GetMeta().GetProject().GetName()}
	// With mutual TLS the name must be the one the certificate was issued to.
	if p, ok := grpcpeer.FromContext(ctx); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
			r.Certified, r.CertName = true, ti.State.PeerCertificates[0].Subject.CommonName
		}
	}
	tok, err := f.h.Register(ctx, r)
	if err != nil {
		return nil, statusOf(err)
	}
	return &fedlearn.FederatedSummary{Comment: "New client registered", Token: tok, Meta: serverMeta(f.h.Meta())}, nil
}

func (f fedService) Heartbeat(ctx context.Context, req *fedlearn.Token) (*fedlearn.FederatedSummary, error) {
	if err := f.h.Heartbeat(ctx, req.Token); err != nil {
		return nil, statusOf(err)
	}
	return &fedlearn.FederatedSummary{}, nil
}

func (f fedService) Quit(ctx context.Context, req *fedlearn.ClientState) (*fedlearn.FederatedSummary, error) {
	if err := f.h.Quit(ctx, req.Token); err != nil {
		return nil, statusOf(err)
	}
	return &fedlearn.FederatedSummary{Comment: "Removed client"}, nil
}

// GetTask answers with the handler's task and the server's FLContext; the
// task's pickle is the one every client of the round shares.
func (f fedService) GetTask(ctx context.Context, req *fedlearn.ClientState) (*fedlearn.CurrentTask, error) {
	t, err := f.h.GetTask(ctx, req.Token)
	if err != nil {
		return nil, statusOf(err)
	}
	data, err := taskData(t)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	m := f.h.Meta()
	ctxData, err := serverContext(m)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &fedlearn.CurrentTask{Meta: serverMeta(m), TaskName: t.Name, Data: &fedlearn.ModelData{Params: map[string]*fedlearn.NDArray{
		"data": {Ndarray: data}, "fl_context": {Ndarray: ctxData}}}}, nil
}

func (f fedService) SubmitUpdate(ctx context.Context, req *fedlearn.Contribution) (*fedlearn.FederatedSummary, error) {
	if req.Client == nil {
		return nil, status.Error(codes.InvalidArgument, "no client state")
	}
	result := func() (*flare.Shareable, error) {
		if req.Data == nil || req.Data.Params["data"] == nil {
			return nil, nil
		}
		return DecodeShareable(req.Data.Params["data"].Ndarray)
	}
	comment, err := f.h.Submit(ctx, req.Client.Token, result)
	if err != nil {
		return nil, statusOf(err)
	}
	return &fedlearn.FederatedSummary{Comment: comment}, nil
}

type adminService struct {
	admin.UnimplementedAdminCommunicatingServer
	h flare.ServerHandler
}

// Retrieve answers the admin channel's poll (the client names itself by
// its token, as NVFlare's does) with the requests queued for it.
func (a adminService) Retrieve(ctx context.Context, req *admin.Client) (*admin.Messages, error) {
	reqs, err := a.h.Poll(ctx, req.ClientName)
	if err != nil {
		return nil, statusOf(err)
	}
	msgs := make([]*admin.Message, len(reqs))
	for i, r := range reqs {
		msgs[i] = AdminMessage(r)
	}
	return &admin.Messages{Message: msgs}, nil
}

// SendReply hands a client's reply to the handler: the request it answers
// is the one its _refMsgId names.
func (a adminService) SendReply(ctx context.Context, req *admin.Reply) (*admin.Empty, error) {
	var id string
	var reply *flare.AdminReply
	if m := req.Message; m != nil {
		id, reply = m.Headers["_refMsgId"], &flare.AdminReply{Text: m.Body}
	}
	if err := a.h.Reply(ctx, req.ClientName, id, reply); err != nil {
		return nil, statusOf(err)
	}
	return &admin.Empty{}, nil
}

func (w ServerWire) options() []grpc.ServerOption {
	opts := w.ServerOptions
	if w.TLS != nil {
		opts = append([]grpc.ServerOption{grpc.Creds(credentials.NewTLS(w.TLS))}, opts...)
	}
	return opts
}
