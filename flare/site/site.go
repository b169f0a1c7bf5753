// Package site is a flarego site on an NVFlare 2.4+ server (CellNet):
// what NVFlare's client_train and its job processes do, in one process.
//
// The parent cell (the site's name) signs in (package register), keeps
// alive with heartbeats that name the running jobs, and answers the
// server's admin requests: scheduler.check_resource, train.deploy (the
// app unpacked into WORKSPACE/<job id>/app_<site>,
// in secure mode only if its signatures check out against the kit's root
// CA, package deploy), train.start_job,
// train.abort, train.abort_task, train.delete_run, train.check_status and
// train.shutdown (after which it quits and Run returns). A started job
// gets its own cell, <site>.<job id>, on its own connection (package
// jobcell), run by the client runtime (package flare/client) with the
// executors the app's config_fed_client.json names. A lost connection to
// the server is dialled again and the site registers again; the jobs it
// was running are reported failed.
//
// When a job ends the parent cell reports its outcome (finished, aborted,
// failed: register.ReportJobOutcome) and only then stops naming it in its
// heartbeats, as NVFlare's client does: NVFlare main (2.9) sets a job's
// final status only once every site has reported.
package site

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/cellnet/cell"
	"github.com/flarego/flarego/flare/cellnet/conn"
	"github.com/flarego/flarego/flare/cellnet/deploy"
	"github.com/flarego/flarego/flare/cellnet/download"
	"github.com/flarego/flarego/flare/cellnet/fobs"
	"github.com/flarego/flarego/flare/cellnet/jobcell"
	"github.com/flarego/flarego/flare/cellnet/msgpk"
	"github.com/flarego/flarego/flare/cellnet/register"
	"github.com/flarego/flarego/flare/cellnet/stream"
	"github.com/flarego/flarego/flare/client"
	"github.com/flarego/flarego/persistor"
)

// A Site is one site of an NVFlare 2.4+ project.
type Site struct {
	Name string
	Kit  *flare.StartupKit
	// Workspace is where deployed apps go (the kit's parent folder).
	Workspace string
	// Tasks builds the executors of a deployed app folder.
	Tasks func(appDir string) (map[string]flare.Executor, error)
	// Secure (secure_train=true) has deployed apps checked: only an app
	// signed by a certificate of the kit's root CA runs.
	Secure bool
	Logf   func(format string, args ...any)
	// Heartbeat is the parent cell's heartbeat interval (NVFlare: 10 s
	// here); GiveUp bounds how long the server may stay unreachable.
	Heartbeat, GiveUp time.Duration
	// Started is when the process started (for the registration's log
	// line); zero leaves it out.
	Started time.Time

	// dialLink, when set, replaces the gRPC connection (tests).
	dialLink func(ctx context.Context, fqcn string) (cell.Link, error)

	id     *register.Identity
	rootCA *x509.Certificate
	opts   []grpc.DialOption
	mu     sync.Mutex
	auth   *cell.Auth
	cell   *cell.Cell // the parent cell, while connected
	jobs   map[string]*job
	quit   chan struct{}
	quitO  sync.Once
}

type job struct {
	id      string
	cancel  context.CancelFunc
	tr      *jobcell.Transport
	done    chan struct{}
	err     error
	aborted bool // stopped by abortJob or stopJobs
	ended   bool // its run returned (its outcome is being reported)
}

// reportTimeout bounds the wait for the server's answer to an outcome
// report (NVFlare's job_query_timeout).
const reportTimeout = 5 * time.Second

func (s *Site) logf(format string, args ...any) {
	if s.Logf != nil {
		s.Logf(format, args...)
	}
}

// DialOptions are the gRPC credentials the kit's connection_security
// asks for: clear (h2c), tls (the server's certificate checked against
// the kit's root CA and its host name) or mtls (and the site's own
// certificate).
func DialOptions(k *flare.StartupKit) ([]grpc.DialOption, error) {
	sec := strings.ToLower(k.Client.ConnectionSecurity)
	host, _, err := net.SplitHostPort(k.Target())
	if err != nil {
		return nil, fmt.Errorf("%s: servers[0].service.target %q: %w", k.Path, k.Target(), err)
	}
	file := func(name string) string {
		if filepath.IsAbs(name) {
			return name
		}
		return filepath.Join(k.Dir, name)
	}
	switch sec {
	case "", "clear":
		return []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, nil
	case "tls":
		pem, err := persistor.ReadRegular(file(k.Client.SSLRootCert), 1<<20, "a root certificate (a few KiB)")
		if err != nil {
			return nil, fmt.Errorf("%s: ssl_root_cert: %w", k.Path, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s: ssl_root_cert %s holds no PEM certificate", k.Path, k.Client.SSLRootCert)
		}
		cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12, InsecureSkipVerify: true,
			VerifyConnection: flare.VerifyServer(pool, host), ServerName: host}
		return []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(cfg))}, nil
	case "mtls":
		cfg, err := flare.ClientTLS(file(k.Client.SSLRootCert), file(k.Client.SSLCert), file(k.Client.SSLPrivateKey), host)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", k.Path, err)
		}
		cfg.ServerName = host
		return []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(cfg))}, nil
	}
	return nil, fmt.Errorf("%s: client.connection_security %q: want clear, tls or mtls", k.Path, flare.LogCut(k.Client.ConnectionSecurity))
}

// Run signs the site in and serves the server until it shuts the site
// down (nil), ctx ends, or the server stays unreachable for GiveUp.
func (s *Site) Run(ctx context.Context) error {
	if err := flare.CheckName("site name", s.Name); err != nil {
		return err
	}
	k := s.Kit
	if sch := k.Servers[0].Service.Scheme; sch != "" && sch != "grpc" {
		return fmt.Errorf("%s: scheme %q: flarego speaks NVFlare's gRPC driver only (provision with scheme: grpc)", k.Path, flare.LogCut(sch))
	}
	var err error
	if s.opts, err = DialOptions(k); err != nil {
		return err
	}
	s.id, err = register.LoadIdentity(s.Name, k.Project(), filepath.Join(k.Dir, k.Client.SSLCert), filepath.Join(k.Dir, k.Client.SSLPrivateKey),
		filepath.Join(k.Dir, k.Client.SSLRootCert), k.Servers[0].Identity, func(p string) ([]byte, error) {
			return persistor.ReadRegular(p, 1<<20, "a certificate or key (a few KiB)")
		})
	if err != nil {
		return fmt.Errorf("%s: %w", k.Path, err)
	}
	if s.Secure {
		s.rootCA = s.id.Root
	}
	if s.Heartbeat <= 0 {
		s.Heartbeat = 10 * time.Second
	}
	if s.GiveUp <= 0 {
		s.GiveUp = 5 * time.Minute
	}
	s.jobs = map[string]*job{}
	s.quit = make(chan struct{})
	defer s.stopJobs("the site stopped")
	for {
		c, err := s.connect(ctx)
		if err != nil {
			return err
		}
		s.mu.Lock()
		s.cell = c
		s.mu.Unlock()
		lost := s.serve(ctx, c)
		s.mu.Lock()
		s.cell = nil
		s.mu.Unlock()
		c.Close()
		select {
		case <-s.quit:
			return nil
		default:
		}
		if ctx.Err() != nil {
			return fmt.Errorf("site %s stopped: %w", s.Name, ctx.Err())
		}
		s.logf("site %s: connection to the server lost (%v); connecting again", s.Name, lost)
		s.stopJobs("the connection to the server was lost")
	}
}

// connect dials the server and registers, retrying while it is away.
func (s *Site) connect(ctx context.Context) (*cell.Cell, error) {
	start, backoff := time.Now(), 200*time.Millisecond
	target := s.Kit.Target()
	for logged := false; ; {
		t0 := time.Now()
		c, err := s.dial(ctx, s.Name)
		dialled := time.Since(t0)
		if err == nil {
			// Answered from the start: the server may ask as soon as
			// the site is registered.
			c.Handle("admin", "admin", func(req *cell.Message) *cell.Message { return s.admin(ctx, c, req) })
			c.Handle("cellnet.channel", "bye", func(*cell.Message) *cell.Message { return &cell.Message{} })
			var a *cell.Auth
			a, err = register.Register(ctx, c, s.id, "")
			if err == nil {
				c.SetAuth(a)
				s.mu.Lock()
				s.auth = a
				s.mu.Unlock()
				since := ""
				if !s.Started.IsZero() {
					since = fmt.Sprintf(", %s after the process started", time.Since(s.Started).Round(time.Millisecond))
				}
				s.logf("site %s: registered with %s at %s in %s (connection %s, challenge and register %s%s)", s.Name, s.Kit.Servers[0].Identity, target,
					time.Since(t0).Round(time.Millisecond), dialled.Round(time.Millisecond), (time.Since(t0) - dialled).Round(time.Millisecond), since)
				return c, nil
			}
			c.Close()
			if errors.Is(err, register.ErrIdentity) {
				return nil, fmt.Errorf("site %s: %w", s.Name, err)
			}
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("site %s stopped while connecting to %s: %w", s.Name, target, ctx.Err())
		}
		if strings.Contains(err.Error(), "certificate") || strings.Contains(err.Error(), "handshake") {
			return nil, fmt.Errorf("site %s: TLS with the server at %s failed (certificates from another root?): %w", s.Name, target, err)
		}
		if time.Since(start) > s.GiveUp {
			return nil, fmt.Errorf("site %s: the server at %s unreachable for %s: %w", s.Name, target, s.GiveUp, err)
		}
		if !logged {
			s.logf("site %s: waiting for the server at %s (%v); retrying, giving up in %s", s.Name, target, err, s.GiveUp.Round(time.Second))
			logged = true
		}
		if err := flare.Sleep(ctx, backoff); err != nil {
			return nil, fmt.Errorf("site %s stopped while connecting to %s: %w", s.Name, target, err)
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (s *Site) dial(ctx context.Context, fqcn string) (*cell.Cell, error) {
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if s.dialLink != nil {
		l, err := s.dialLink(dctx, fqcn)
		if err != nil {
			return nil, err
		}
		return cell.New(l, fqcn), nil
	}
	cn, err := conn.Dial(dctx, s.Kit.Target(), fqcn, s.opts...)
	if err != nil {
		return nil, err
	}
	return cell.New(cn, fqcn), nil
}

// dialJobCell connects a job's cell, retrying while the server is
// unreachable (a network cut just after the job was deployed), for at
// most GiveUp.
func (s *Site) dialJobCell(ctx context.Context, fqcn string) (*cell.Cell, error) {
	start, backoff, logged := time.Now(), 200*time.Millisecond, false
	for {
		c, err := s.dial(ctx, fqcn)
		if err == nil {
			if logged {
				s.logf("site %s: job cell %s connected after %s", s.Name, fqcn, time.Since(start).Round(time.Millisecond))
			}
			return c, nil
		}
		if ctx.Err() != nil || time.Since(start) > s.GiveUp {
			return nil, fmt.Errorf("job cell %s: %w", fqcn, err)
		}
		if !logged {
			s.logf("site %s: job cell %s: waiting for the server (%v); retrying, giving up in %s", s.Name, fqcn, err, s.GiveUp.Round(time.Second))
			logged = true
		}
		if err := flare.Sleep(ctx, backoff); err != nil {
			return nil, fmt.Errorf("job cell %s: %w", fqcn, err)
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// serve answers the server on c and heartbeats until c ends or the site
// is shut down.
func (s *Site) serve(ctx context.Context, c *cell.Cell) error {
	t := time.NewTicker(s.Heartbeat)
	defer t.Stop()
	// The first heartbeat goes a second after registering, as NVFlare's
	// client sends it: a server takes it as the site being ready.
	first := time.After(min(time.Second, s.Heartbeat))
	for {
		var tick <-chan time.Time = t.C
		if first != nil {
			tick = first
		}
		select {
		case <-c.Done():
			return c.Err()
		case <-s.quit:
			qctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			payload, _ := fobs.Encode(flare.NewShareable())
			c.Request(qctx, "server", "task", "quit", msgpk.Map{{Key: "project_name", Value: s.Kit.Project()}}, payload, cell.EncodingFOBS)
			cancel()
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-tick:
			first = nil
			hctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			r, err := register.Heartbeat(hctx, c, s.id, s.jobIDs())
			cancel()
			if err != nil {
				s.logf("site %s: heartbeat: %v", s.Name, err)
				continue
			}
			if v, ok := r.Headers.Get("abort_jobs"); ok {
				if l, ok := v.([]any); ok {
					for _, j := range l {
						if id, ok := j.(string); ok {
							s.abortJob(id, "the server aborted it")
						}
					}
				}
			}
		}
	}
}

func (s *Site) jobIDs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := make([]string, 0, len(s.jobs))
	for id := range s.jobs {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// admin answers one admin request of the server.
func (s *Site) admin(ctx context.Context, c *cell.Cell, req *cell.Message) *cell.Message {
	m, err := decodeAdmin(req.Payload)
	if err != nil {
		s.logf("site %s: admin request refused: %v", s.Name, err)
		return reply(errorReply(fmt.Sprintf("flarego site %s cannot read the request: %v", s.Name, err)))
	}
	jobID := m.Headers.String("job_id")
	switch m.Topic {
	case "scheduler.check_resource":
		sh := flare.NewShareable()
		sh.SetHeader("_is_resource_enough", true)
		sh.SetHeader("_resource_reserve_token", flare.NewUUID())
		return reply(&fobs.Message{ID: flare.NewUUID(), Topic: "reply_" + m.Topic, Body: sh, Headers: msgpk.Map{}})
	case "scheduler.cancel_resource", "train.notify_job_status", "train.configure_job_log":
		return reply(okReply("reply_"+m.Topic, "ok"))
	case "train.deploy":
		d := deploy.Site{Name: s.Name, Workspace: s.Workspace, RootCA: s.rootCA}
		r := d.Deploy(m)
		if !r.OK {
			s.logf("site %s: deploying job %s refused: %v", s.Name, flare.LogCut(jobID), r.Err)
		} else if r.Signer != nil {
			s.logf("site %s: job %s deployed to %s (signed by %s)", s.Name, jobID, r.AppDir, flare.LogCut(r.Signer.Subject.CommonName))
		} else {
			s.logf("site %s: job %s deployed to %s", s.Name, jobID, r.AppDir)
		}
		return reply(r.Reply())
	case "train.start_job":
		if err := s.startJob(ctx, jobID); err != nil {
			s.logf("site %s: starting job %s failed: %v", s.Name, flare.LogCut(jobID), err)
			return reply(errorReply(fmt.Sprintf("start job on %s failed: %v", s.Name, err)))
		}
		return reply(&fobs.Message{ID: flare.NewUUID(), Topic: "reply_" + m.Topic, Body: "Start the client app...", Headers: msgpk.Map{}})
	case "train.abort":
		if !s.abortJob(jobID, "the server's admin aborted it") {
			return reply(okReply("reply_"+m.Topic, "Client app is not running"))
		}
		return reply(okReply("reply_"+m.Topic, "Abort signal has been sent to the client App."))
	case "train.abort_task":
		return reply(okReply("reply_"+m.Topic, "Task abort signal sent"))
	case "train.delete_run":
		if err := flare.CheckPathName("job id", jobID); err != nil {
			return reply(errorReply(err.Error()))
		}
		os.RemoveAll(filepath.Join(s.Workspace, jobID))
		return reply(okReply("reply_"+m.Topic, "Delete run folder: "+jobID))
	case "train.check_status":
		ids := s.jobIDs()
		return reply(okReply("reply_"+m.Topic, fmt.Sprintf("site %s: %d job(s) running %s", s.Name, len(ids), strings.Join(ids, ", "))))
	case "train.shutdown":
		s.logf("site %s: shut down by the server", s.Name)
		s.quitO.Do(func() { time.AfterFunc(100*time.Millisecond, func() { close(s.quit) }) })
		return reply(okReply("reply_"+m.Topic, "Shutdown the client..."))
	}
	s.logf("site %s: admin topic %s is not supported", s.Name, flare.LogCut(m.Topic))
	return reply(errorReply(fmt.Sprintf("flarego site %s does not support %s", s.Name, flare.LogCut(m.Topic))))
}

func decodeAdmin(b []byte) (*fobs.Message, error) { return fobs.DecodeMessage(b) }

func okReply(topic, body string) *fobs.Message {
	return &fobs.Message{ID: flare.NewUUID(), Topic: topic, Body: body, Headers: msgpk.Map{{Key: "_rtnCode", Value: "_ok"}}}
}

func errorReply(text string) *fobs.Message {
	return &fobs.Message{ID: flare.NewUUID(), Topic: "reply", Body: text, Headers: msgpk.Map{{Key: "_rtnCode", Value: "_error"}}}
}

func reply(m *fobs.Message) *cell.Message {
	b, err := fobs.Encode(m)
	if err != nil {
		return &cell.Message{Headers: msgpk.Map{{Key: cell.HReturnCode, Value: cell.RCProcessException}, {Key: cell.HError, Value: err.Error()}}}
	}
	return &cell.Message{Payload: b}
}

// appDir is where a job's app goes: WORKSPACE/<job id>/app_<site>.
func (s *Site) appDir(jobID string) (string, error) {
	if err := flare.CheckPathName("job id", jobID); err != nil {
		return "", err
	}
	return filepath.Join(s.Workspace, jobID, "app_"+s.Name), nil
}

// startJob opens the job's cell and runs it.
func (s *Site) startJob(ctx context.Context, jobID string) error {
	dir, err := s.appDir(jobID)
	if err != nil {
		return err
	}
	if _, err := os.Stat(dir); err != nil {
		return fmt.Errorf("job %s was not deployed", jobID)
	}
	tasks, err := s.Tasks(dir)
	if err != nil {
		return err
	}
	s.mu.Lock()
	if s.auth == nil {
		s.mu.Unlock()
		return errors.New("the site is not registered yet")
	}
	if _, ok := s.jobs[jobID]; ok {
		s.mu.Unlock()
		return fmt.Errorf("job %s is already running", jobID)
	}
	jctx, cancel := context.WithCancel(ctx)
	j := &job{id: jobID, cancel: cancel, done: make(chan struct{})}
	s.jobs[jobID] = j
	auth := s.auth
	s.mu.Unlock()
	go func() {
		defer close(j.done)
		j.err = s.runJob(jctx, j, tasks, auth)
		s.mu.Lock()
		j.ended = true
		code, reason := j.outcome()
		s.mu.Unlock()
		s.reportOutcome(jobID, code, reason)
		s.mu.Lock()
		delete(s.jobs, jobID)
		s.mu.Unlock()
		if j.err != nil {
			s.logf("site %s: job %s failed: %v", s.Name, jobID, j.err)
		} else {
			s.logf("site %s: job %s finished", s.Name, jobID)
		}
	}()
	return nil
}

// MaxModelBytes bounds the arrays of one task a site downloads.
var MaxModelBytes int64 = 4 << 30

// Downloader pulls the arrays a job's tasks send by reference from the
// sender's download service, over the job cell's streamer. A task's model
// may be a few GB (the server is the project's, authenticated by its
// certificate); MaxModelBytes stops a runaway one.
func Downloader(st *stream.Streamer) func(context.Context) fobs.Options {
	return download.Over(st, MaxModelBytes)
}

// Serve answers download requests on st from svc.
func Serve(st *stream.Streamer, svc *download.Service) { download.ServeOn(st, svc) }

type staticWire struct{ t flare.ClientTransport }

func (w staticWire) Dial(string) (flare.ClientTransport, error) { return w.t, nil }

func (s *Site) runJob(ctx context.Context, j *job, tasks map[string]flare.Executor, auth *cell.Auth) error {
	fqcn := s.Name + "." + j.id
	c, err := s.dialJobCell(ctx, fqcn)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetAuth(auth)
	st := stream.New(c, stream.Limits{})
	defer st.Close()
	tr := jobcell.New(c, st, s.Name, s.Kit.Project(), j.id, auth.Token)
	tr.Options = Downloader(st)
	// Results go as NVFlare's own sites send them: arrays by reference,
	// pulled by the server from this cell's download service.
	svc := download.NewService(fqcn, download.Config{})
	defer svc.Close()
	Serve(st, svc)
	tr.EncodeResult = svc.Encode
	s.mu.Lock()
	j.tr = tr
	s.mu.Unlock()
	cl := &client.Client{Name: s.Name, Target: s.Kit.Target(), Tasks: tasks, Project: s.Kit.Project(), Wire: staticWire{tr},
		Heartbeat: 30 * time.Second, GiveUp: s.GiveUp, Logf: func(format string, args ...any) { s.logf("job "+j.id+": "+format, args...) }}
	err = cl.Run(ctx)
	if err == nil || tr.Ended() {
		return nil
	}
	return err
}

// outcome is how the job ended, as register.ReportJobOutcome reports it
// (s.mu held).
func (j *job) outcome() (code int, reason string) {
	switch {
	case j.aborted:
		return register.JobAborted, "aborted"
	case j.err != nil:
		return register.JobException, "exception"
	}
	return register.JobFinished, ""
}

// reportOutcome tells the server how a job ended, waiting for its answer
// at most reportTimeout, and not past the site's shutdown.
func (s *Site) reportOutcome(jobID string, code int, reason string) {
	s.mu.Lock()
	c := s.cell
	s.mu.Unlock()
	if c == nil {
		s.logf("site %s: job %s: not connected to the server; its outcome (%d) goes unreported", s.Name, jobID, code)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), reportTimeout)
	defer cancel()
	go func() {
		select {
		case <-s.quit:
			cancel()
		case <-ctx.Done():
		}
	}()
	err := register.ReportJobOutcome(ctx, c, jobID, code, reason)
	if err != nil && ctx.Err() == nil {
		s.logf("site %s: job %s: reporting its outcome (%d): %v", s.Name, jobID, code, err)
	}
}

func (s *Site) abortJob(id, why string) bool {
	s.mu.Lock()
	j := s.jobs[id]
	running := j != nil && !j.ended
	if running {
		j.aborted = true
	}
	s.mu.Unlock()
	if !running {
		return false
	}
	s.logf("site %s: stopping job %s: %s", s.Name, id, why)
	j.cancel()
	return true
}

// stopJobs stops every running job and waits for them.
func (s *Site) stopJobs(why string) {
	s.mu.Lock()
	var js []*job
	for _, j := range s.jobs {
		if !j.ended {
			j.aborted = true
		}
		js = append(js, j)
	}
	s.mu.Unlock()
	for _, j := range js {
		s.logf("site %s: stopping job %s: %s", s.Name, j.id, why)
		j.cancel()
		<-j.done
	}
}
