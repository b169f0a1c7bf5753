package flare

import (
	"context"
	"errors"
	"net"
	"sync"

	"github.com/flarego/flarego/persistor"
)

// A ClientWire connects a client runtime (flare/client) to a server over
// one wire generation: flare/wire20's Wire is NVFlare 2.0's gRPC with
// pickled payloads. The runtime holds the client's state (its name, token
// and run) and passes it with every call; the wire holds the connection
// and the encoding.
type ClientWire interface {
	Dial(target string) (ClientTransport, error)
}

// A ClientTransport carries a client's calls to its server. Each call
// blocks until the server answers or ctx ends. Its errors wrap a
// *CallError that says whether the call is worth repeating; any other
// error is final.
type ClientTransport interface {
	// Register signs the client in and returns its token.
	Register(ctx context.Context, s Session) (token string, err error)
	// Heartbeat tells the server the client is alive.
	Heartbeat(ctx context.Context, s Session) error
	// GetTask asks for work: a task to run, TaskTryAgain or TaskEndRun.
	GetTask(ctx context.Context, s Session) (*Task, error)
	// Submit sends the result of a task.
	Submit(ctx context.Context, s Session, task *Task, result *Shareable) error
	// Poll fetches the admin requests the server has queued for the client.
	Poll(ctx context.Context, s Session) ([]*AdminRequest, error)
	// Reply answers an admin request.
	Reply(ctx context.Context, s Session, req *AdminRequest, reply *AdminReply) error
	// Close ends the connection.
	Close() error
}

// Session is who a client is to its server: its name and project, the
// token of its registration ("" before), and the run it works in.
type Session struct {
	Name, Project, Token string
	Run                  int64
}

// Task is a task: as the server runtime hands it to its wire, or as a
// client's wire decoded it.
type Task struct {
	Name string
	// Data is the task's Shareable; a special task whose data could not be
	// read has an empty one.
	Data *Shareable
	// Context is the server's FLContext, or nil. (The server runtime
	// leaves it nil: its wire adds the server's public FLContext.)
	Context *FLContext

	// Memo is where a server's wire keeps what it made of the task (its
	// encoding, under a key of the wire's own type): the server runtime
	// hands one *Task to every client of a round, and hundreds of clients
	// then share one encoded copy of the model.
	Memo sync.Map
}

// AdminRequest is a request of the server's admin channel (deploy, start,
// check status, …): a topic, its headers and its body.
type AdminRequest struct {
	ID      string
	Topic   string
	Headers map[string]string
	Body    []byte
	// Shareable is Body decoded, for topics that carry one (an aux
	// command); nil if it could not be read.
	Shareable *Shareable
}

// AdminReply answers an AdminRequest: text, or a Shareable.
type AdminReply struct {
	Text      []byte
	Shareable *Shareable
}

// CallErrorKind says what a failed call means to the caller.
type CallErrorKind int

const (
	// Refused: the server (or the wire) refused the call; final.
	Refused CallErrorKind = iota
	// Unavailable: the server is away or busy; worth repeating.
	Unavailable
	// TimedOut: no answer in time; worth repeating.
	TimedOut
	// Canceled: the call was cancelled on this side.
	Canceled
	// UnknownToken: the server does not know the client's token (it
	// restarted, or dropped the client); register again.
	UnknownToken
	// Invalid, Denied and Exhausted are refusals that say why, as the
	// server runtime gives them to its wire: a request it cannot take (a
	// bad name, a bad result), a name its peer's certificate does not
	// allow, a server that is full. They are final; a client's wire may
	// report them all as Refused.
	Invalid
	Denied
	Exhausted
)

// A CallError is a failed call, classified. Its text is the underlying
// error's; Reason is the server's or the wire's own words, for a log line.
type CallError struct {
	Kind   CallErrorKind
	Reason string
	Err    error
}

func (e *CallError) Error() string { return e.Err.Error() }
func (e *CallError) Unwrap() error { return e.Err }

// CallKind is the kind of a failed call's error: Refused unless it wraps
// a *CallError.
func CallKind(err error) CallErrorKind {
	var ce *CallError
	if errors.As(err, &ce) {
		return ce.Kind
	}
	return Refused
}

// CallReason is the reason of a failed call, for a log line.
func CallReason(err error) string {
	var ce *CallError
	if errors.As(err, &ce) && ce.Reason != "" {
		return ce.Reason
	}
	return err.Error()
}

// A ServerWire serves a server runtime's clients (flare/server) over one
// wire generation: flare/wire20's ServerWire is NVFlare 2.0's gRPC with
// pickled payloads. The runtime holds the clients, the runs and the admin
// queue, and answers through a ServerHandler; the wire holds the
// connections, the encoding and the limits on what a peer may send.
type ServerWire interface {
	// Serve answers the clients that connect on lis through h until ctx
	// ends, then stops: the calls in flight get a few seconds to end, none
	// when ctx was cancelled with the cause ErrStopNow. It returns the
	// error that stopped the listener, if any.
	Serve(ctx context.Context, lis net.Listener, h ServerHandler) error
	// Prepare makes what the wire sends of t (its encoding) once, for every
	// client the runtime will hand t to, and keeps it in t.Memo; an error
	// means that t cannot go out. A task not prepared is made on its first
	// GetTask.
	Prepare(t *Task) error
}

// ErrStopNow, as the cause of a cancelled context (context.WithCancelCause),
// tells ServerWire.Serve to stop at once, dropping the calls in flight.
var ErrStopNow = errors.New("server stopped")

// ErrInterrupted, as the cause of a cancelled context, says that the
// process is stopping on a signal (a container restarted, Ctrl-C), not
// because its work is done or an operator shut the system down: a server
// then leaves its sites running, to register again when it is back.
var ErrInterrupted = errors.New("interrupted")

// A ServerHandler is the server runtime as its wire calls it: one method
// per call a client makes, each with the client's token ("" for none).
// Its errors wrap a *CallError whose Kind the wire maps to its own codes
// (Invalid, Denied, Exhausted, UnknownToken) and whose text it sends as
// the reason; any other error is an internal one.
type ServerHandler interface {
	// Register signs a client in and returns its token.
	Register(ctx context.Context, r Registration) (token string, err error)
	// Heartbeat marks the client alive.
	Heartbeat(ctx context.Context, token string) error
	// Quit signs the client out.
	Quit(ctx context.Context, token string) error
	// GetTask hands out work: a task, TaskTryAgain or TaskEndRun. Every
	// client of a round gets the same *Task; the wire must not change it.
	GetTask(ctx context.Context, token string) (*Task, error)
	// Submit takes the result of a task. result decodes it, only once the
	// token is known; it returns nil when the call carried no result.
	Submit(ctx context.Context, token string, result func() (*Shareable, error)) (comment string, err error)
	// Poll hands out the admin requests queued for the client.
	Poll(ctx context.Context, token string) ([]*AdminRequest, error)
	// Reply takes the client's answer to the admin request of id
	// requestID (reply may be nil: the call only shows the token). The
	// reply's body comes as Text, as the client sent it.
	Reply(ctx context.Context, token, requestID string, reply *AdminReply) error
	// KnownToken says whether token is a registered client's, without
	// marking it alive: the wire may check it before it reads a request.
	KnownToken(token string) bool
	// ResultModel is the model a result must match now (the round's
	// global model), or nil before there is one: the wire bounds the size
	// of a result by it before it reads one.
	ResultModel() *persistor.StateDict
	// Meta is what the wire's answers say of the server and its run.
	Meta() ServerMeta
}

// Registration is who a client says it is when it signs in.
type Registration struct {
	Name, Project string
	// Certified says the peer showed a certificate (mutual TLS), and
	// CertName is its common name: the name must be that one.
	Certified bool
	CertName  string
}

// ServerMeta is the server's project and its run as answers carry them:
// the run number (0 before the first), the current round (from 0) and
// the number of rounds (0 without a run).
type ServerMeta struct {
	Project          string
	Run              int64
	Round, NumRounds int
}
