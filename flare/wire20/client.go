package wire20

import (
	"context"
	"crypto/tls"
	"fmt"
	"strconv"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding/gzip"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/proto/admin"
	"github.com/flarego/flarego/proto/fedlearn"
)

// Wire is NVFlare 2.0's wire for a client runtime (a flare.ClientWire):
// gRPC calls to fedlearn.FederatedTraining and admin.AdminCommunicating,
// Shareables and FLContexts as pickles.
type Wire struct {
	// DialOptions are added to the connection's; without TLS or
	// credentials among them, the connection is insecure.
	DialOptions []grpc.DialOption
	// TLS, when set, is the client's TLS configuration
	// (flare.StartupKit.ClientTLSConfig); it replaces the insecure default.
	TLS *tls.Config
	// Gzip compresses requests, as NVFlare's "compression": "Gzip" does
	// (the server answers in kind); on loopback it only costs time.
	Gzip bool
	// Keepalive is how often the client pings the server while a call is
	// under way, and how long it waits for the answer. A network cut drops
	// packets without a reset, so a call in flight would otherwise wait for
	// ever on a dead connection; with pings it fails after Time + Timeout
	// and the client retries on a new connection. Zero: DefaultKeepalive.
	Keepalive keepalive.ClientParameters
}

// DefaultKeepalive pings once a minute while a call is under way (flarego's
// server allows a ping every 10 s): a dead connection fails its call within
// 80 s.
var DefaultKeepalive = keepalive.ClientParameters{Time: time.Minute, Timeout: 20 * time.Second}

// DefaultProject is the project name a client names when it has none
// (NVFlare 2.0's POC project).
const DefaultProject = "example_project"

// Dial makes a connection to the server at target (host:port). gRPC
// connects on the first call.
func (w Wire) Dial(target string) (flare.ClientTransport, error) {
	opts := w.DialOptions
	if w.TLS != nil {
		opts = append([]grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(w.TLS))}, opts...)
	}
	if opts == nil {
		opts = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	}
	callOpts := []grpc.CallOption{grpc.MaxCallRecvMsgSize(MaxMessageBytes), grpc.MaxCallSendMsgSize(MaxMessageBytes)}
	if w.Gzip {
		callOpts = append(callOpts, grpc.UseCompressor(gzip.Name))
	}
	opts = append(opts, grpc.WithDefaultCallOptions(callOpts...))
	ka := w.Keepalive
	if ka.Time == 0 {
		ka = DefaultKeepalive
	}
	opts = append(opts, grpc.WithKeepaliveParams(ka))
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		return nil, err
	}
	return &clientTransport{conn: conn, fl: fedlearn.NewFederatedTrainingClient(conn), ac: admin.NewAdminCommunicatingClient(conn)}, nil
}

type clientTransport struct {
	conn *grpc.ClientConn
	fl   fedlearn.FederatedTrainingClient
	ac   admin.AdminCommunicatingClient
}

func (t *clientTransport) Close() error { return t.conn.Close() }

// withToken puts the client's token in the call's metadata, as NVFlare's
// secure-mode client does: the server's gate checks it before a call takes
// a slot, so a registered client never queues behind calls that carry none.
func withToken(ctx context.Context, s flare.Session) context.Context {
	if s.Token == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, TokenHeader, s.Token)
}

// callError classifies a gRPC error for the runtime.
func callError(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	kind := flare.Refused
	switch st.Code() {
	case codes.Unavailable:
		kind = flare.Unavailable
	case codes.DeadlineExceeded:
		kind = flare.TimedOut
	case codes.Canceled:
		kind = flare.Canceled
	case codes.Unauthenticated:
		kind = flare.UnknownToken
	}
	return &flare.CallError{Kind: kind, Reason: st.Message(), Err: err}
}

func meta(s flare.Session) *fedlearn.MetaData {
	p := s.Project
	if p == "" {
		p = DefaultProject
	}
	return &fedlearn.MetaData{Project: &fedlearn.MetaData_Project{Name: p}, RunNumber: s.Run}
}

// clientContext is the client's public FLContext, as NVFlare 2.0's client
// sends it: run number, identity, client name and token, all public.
func clientContext(s flare.Session) ([]byte, error) {
	return EncodeFLContext(&flare.FLContext{Props: []flare.Prop{
		{Name: "__run_num__", Value: s.Run, Mask: 1}, {Name: "__identity_name__", Value: s.Name, Mask: 1},
		{Name: "__client_name__", Value: s.Name, Mask: 1}, {Name: "fl_token", Value: s.Token, Mask: 1}}})
}

// ClientState is the ClientState of GetTask and SubmitUpdate. NVFlare's
// server unpickles the client's public FLContext from its
// context["fl_context"].
func ClientState(s flare.Session) *fedlearn.ClientState {
	st := &fedlearn.ClientState{ClientName: s.Name, Token: s.Token, Meta: meta(s)}
	if b, err := clientContext(s); err == nil {
		st.Context = map[string]*fedlearn.NDArray{"fl_context": {Ndarray: b}}
	}
	return st
}

func (t *clientTransport) Register(ctx context.Context, s flare.Session) (string, error) {
	resp, err := t.fl.Register(ctx, &fedlearn.ClientLogin{ClientName: s.Name, Meta: meta(s)})
	if err != nil {
		return "", callError(err)
	}
	return resp.Token, nil
}

func (t *clientTransport) Heartbeat(ctx context.Context, s flare.Session) error {
	_, err := t.fl.Heartbeat(withToken(ctx, s), &fedlearn.Token{Token: s.Token, ClientName: s.Name})
	return callError(err)
}

func (t *clientTransport) GetTask(ctx context.Context, s flare.Session) (*flare.Task, error) {
	ct, err := t.fl.GetTask(withToken(ctx, s), ClientState(s))
	if err != nil {
		return nil, callError(err)
	}
	return DecodeTask(ct)
}

// DecodeTask decodes a CurrentTask. A special task (__try_again__,
// __end_run__) whose data cannot be read gets an empty Shareable: its
// data only says how long to wait.
func DecodeTask(ct *fedlearn.CurrentTask) (*flare.Task, error) {
	task := &flare.Task{Name: ct.TaskName}
	sh, err := DecodeShareable(ct.Data.GetParams()["data"].GetNdarray())
	if err == nil {
		task.Data = sh
		if p := ct.Data.GetParams()["fl_context"]; p != nil {
			task.Context, err = DecodeFLContext(p.Ndarray)
		}
	}
	if err != nil {
		if ct.TaskName == flare.TaskTryAgain || ct.TaskName == flare.TaskEndRun {
			return &flare.Task{Name: ct.TaskName, Data: flare.NewShareable()}, nil
		}
		return nil, fmt.Errorf("task %s: %w", strconv.Quote(flare.LogCut(ct.TaskName)), err)
	}
	return task, nil
}

func (t *clientTransport) Submit(ctx context.Context, s flare.Session, task *flare.Task, result *flare.Shareable) error {
	data, err := EncodeShareable(result)
	if err != nil {
		return fmt.Errorf("encoding the result: %w", err)
	}
	flc, err := clientContext(s)
	if err != nil {
		return err
	}
	_, err = t.fl.SubmitUpdate(withToken(ctx, s), &fedlearn.Contribution{Client: ClientState(s), TaskName: task.Name,
		Data: &fedlearn.ModelData{Params: map[string]*fedlearn.NDArray{"data": {Ndarray: data}, "fl_context": {Ndarray: flc}}}})
	return callError(err)
}

func (t *clientTransport) Poll(ctx context.Context, s flare.Session) ([]*flare.AdminRequest, error) {
	msgs, err := t.ac.Retrieve(withToken(ctx, s), &admin.Client{ClientName: s.Token})
	if err != nil {
		return nil, callError(err)
	}
	var reqs []*flare.AdminRequest
	for _, m := range msgs.GetMessage() {
		reqs = append(reqs, AdminRequestOf(m))
	}
	return reqs, nil
}

// AdminRequestOf is an admin channel message as the client runtime
// handles it; an aux command's body is decoded.
func AdminRequestOf(m *admin.Message) *flare.AdminRequest {
	r := &flare.AdminRequest{ID: m.Id, Topic: m.Topic, Headers: m.Headers, Body: m.Body}
	if m.Topic == flare.TopicAux {
		r.Shareable, _ = DecodeShareable(m.Body)
	}
	return r
}

// ReplyMessage is the admin channel message that answers req with reply:
// topic "reply_" + the request's, its id in _refMsgId, a Shareable as
// pickle bytes ("bytes"), text as "str".
func ReplyMessage(req *flare.AdminRequest, reply *flare.AdminReply) (*admin.Message, error) {
	bodyType, body := "str", reply.Text
	if reply.Shareable != nil {
		b, err := EncodeShareable(reply.Shareable)
		if err != nil {
			return nil, err
		}
		bodyType, body = "bytes", b
	}
	return &admin.Message{Id: flare.NewUUID(), Topic: "reply_" + req.Topic, BodyType: bodyType, Body: body,
		Headers: map[string]string{"_refMsgId": req.ID}}, nil
}

func (t *clientTransport) Reply(ctx context.Context, s flare.Session, req *flare.AdminRequest, reply *flare.AdminReply) error {
	m, err := ReplyMessage(req, reply)
	if err != nil {
		return err
	}
	_, err = t.ac.SendReply(withToken(ctx, s), &admin.Reply{ClientName: s.Token, Message: m})
	return callError(err)
}
