// Package serverwire serves server runtimes (flare/server) to NVFlare
// 2.4+ sites and admin consoles over CellNet. A Hub is the server's one
// gRPC listener: it takes the sites' parent cells and their job cells
// (package conn), and the admin consoles' sessions. A parent cell
// registers (package register, whose token check then gates every
// request), heartbeats and quits. Each job runs on the hub as a
// flare.ServerWire (Hub.Job): its sites are deployed the job's app
// (scheduler.check_resource, train.deploy with the app signed as NVFlare
// signs a job, train.start_job) and their job cells (<site>.<job id>) are
// answered by package jobserve for the job's runtime. When the hub stops,
// every site still connected is told train.shutdown, unless a signal
// stopped it (flare.ErrInterrupted): then the sites wait for it to come back.
//
// Wire is the one-job form: a hub with one job, deployed to every site
// as it comes.
//
// The runtime's admin queue (NVFlare 2.0's polled admin channel) is not
// used: NVFlare 2.4+ pushes admin requests to the sites instead.
package serverwire

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/cellnet/cell"
	"github.com/flarego/flarego/flare/cellnet/conn"
	"github.com/flarego/flarego/flare/cellnet/download"
	"github.com/flarego/flarego/flare/cellnet/fobs"
	"github.com/flarego/flarego/flare/cellnet/jobserve"
	"github.com/flarego/flarego/flare/cellnet/msgpk"
	"github.com/flarego/flarego/flare/cellnet/register"
	"github.com/flarego/flarego/flare/cellnet/stream"
)

// A Hub is a server's listener for NVFlare 2.4+ sites and admin consoles.
type Hub struct {
	// TLS, when set, is the listener's TLS (ClientAuth set for mutual TLS).
	TLS *tls.Config
	// Registrar registers the sites and admin sessions (its hooks are the
	// hub's).
	Registrar *register.Registrar
	// MaxModelBytes bounds a result's arrays (default 4 GiB).
	MaxModelBytes int64
	// Admin, when set, sets up an admin console's session on its cell
	// and a streamer on it (registers its handlers, then returns); the
	// hub lets the session register through the Registrar only after, so
	// that no command can come before its handler.
	Admin func(c *cell.Cell, st *stream.Streamer, peer string)
	// OnReady is told when a site is ready for jobs (its first heartbeat
	// after it registered).
	OnReady func(site string)
	Logf    func(format string, args ...any)

	mu      sync.Mutex
	parents map[string]*cell.Cell // site → its parent cell
	ready   map[string]bool       // site → heartbeated since it registered
	jobs    map[string]*Job
}

func (h *Hub) logf(format string, args ...any) {
	if h.Logf != nil {
		h.Logf(format, args...)
	}
}

func (h *Hub) init() {
	h.mu.Lock()
	if h.parents == nil {
		h.parents, h.ready, h.jobs = map[string]*cell.Cell{}, map[string]bool{}, map[string]*Job{}
	}
	h.mu.Unlock()
}

// Online are the sites registered and ready for jobs now, by name (those
// silent past the Registrar's Timeout are left out).
func (h *Hub) Online() []string {
	h.init()
	var out []string
	regs := h.Registrar.Sites()
	h.mu.Lock()
	for _, s := range regs {
		if s.Type == "regular" && h.ready[s.Name] {
			out = append(out, s.Name)
		}
	}
	h.mu.Unlock()
	sort.Strings(out)
	return out
}

// Parent is a ready site's parent cell.
func (h *Hub) Parent(site string) (*cell.Cell, bool) {
	h.init()
	h.mu.Lock()
	defer h.mu.Unlock()
	c, ok := h.parents[site]
	return c, ok && h.ready[site]
}

// jobsOf are the jobs that have a site.
func (h *Hub) jobsOf(site string) []*Job {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []*Job
	for _, j := range h.jobs {
		if _, ok := j.token(site); ok {
			out = append(out, j)
		}
	}
	return out
}

// Serve answers the sites and admin consoles on lis until ctx ends; then
// every site still connected is told to shut down.
func (h *Hub) Serve(ctx context.Context, lis net.Listener) error {
	h.init()
	r := h.Registrar
	r.OnRegister = func(s register.Site, c *cell.Cell) error {
		if s.Type != "regular" {
			return nil // an admin console's session: not a site
		}
		h.mu.Lock()
		h.parents[s.Name] = c
		h.ready[s.Name] = false
		h.mu.Unlock()
		for _, j := range h.jobsOf(s.Name) {
			j.siteLost(s.Name, "it registered again")
		}
		h.logf("site %s registered", s.Name)
		return nil
	}
	// A site is ready for jobs once it heartbeats (NVFlare's site
	// answers admin requests only after its registration has settled).
	r.OnHeartbeat = func(s register.Site) {
		h.mu.Lock()
		first := s.Type == "regular" && !h.ready[s.Name] && h.parents[s.Name] != nil
		if first {
			h.ready[s.Name] = true
		}
		jobs := make([]*Job, 0, len(h.jobs))
		for _, j := range h.jobs {
			jobs = append(jobs, j)
		}
		h.mu.Unlock()
		for _, j := range jobs {
			j.heartbeat(ctx, s, first)
		}
		if first && h.OnReady != nil {
			h.OnReady(s.Name)
		}
	}
	r.OnJobReport = func(s register.Site, jobID string, code int64, reason string) {
		h.mu.Lock()
		j := h.jobs[jobID]
		h.mu.Unlock()
		if j == nil || s.Type != "regular" {
			return
		}
		why := "its job ended"
		if code != register.JobFinished {
			why = fmt.Sprintf("its job ended with code %d: %s", code, flare.LogSafe(reason))
		}
		j.siteLost(s.Name, why)
	}
	r.OnQuit = func(s register.Site) {
		h.mu.Lock()
		delete(h.parents, s.Name)
		delete(h.ready, s.Name)
		h.mu.Unlock()
		for _, j := range h.jobsOf(s.Name) {
			j.siteLost(s.Name, "it quit")
		}
	}
	srv := &conn.Server{Name: "server", Accept: func(c *conn.Conn) { h.accept(ctx, c) }}
	opts := conn.ServerOptions()
	if h.TLS != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(h.TLS)))
	}
	g := grpc.NewServer(opts...)
	srv.Register(g)
	errc := make(chan error, 1)
	go func() { errc <- g.Serve(lis) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	if errors.Is(context.Cause(ctx), flare.ErrInterrupted) {
		// A signal, not the end of the work: the sites stay, to register
		// again with the server when it is back (a container restart).
		h.logf("server interrupted (%v): the sites are left running and will register again when it is back", context.Cause(ctx))
	} else {
		h.shutdownSites()
	}
	stopped := make(chan struct{})
	go func() { g.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(3 * time.Second):
		g.Stop()
	}
	return nil
}

// accept serves one connection: a site's parent cell, an admin session,
// or a site's job cell.
func (h *Hub) accept(ctx context.Context, c *conn.Conn) {
	site, job, isJob := strings.Cut(c.Peer, ".")
	if !isJob {
		// Every handler is set before the cell takes its first message.
		cl := cell.Prepare(c, "server")
		if strings.HasPrefix(c.Peer, "_admin_") && h.Admin != nil {
			st := stream.New(cl, stream.Limits{})
			defer st.Close()
			h.Admin(cl, st, c.Peer)
		}
		h.Registrar.Serve(cl)
		cl.Start()
		<-cl.Done()
		return
	}
	cl := cell.Prepare(c, "server."+job) // started once the job's handlers are set (serveCell)
	cl.SetGate(func(m *cell.Message) error {
		s, err := h.Registrar.Check(m)
		if err == nil && s.Name != site {
			err = fmt.Errorf("%s's token on %s's job cell", s.Name, flare.LogCut(site))
		}
		return err
	})
	h.mu.Lock()
	j := h.jobs[job]
	h.mu.Unlock()
	if j == nil {
		h.logf("site %s: a job cell for job %s, which this server does not run", flare.LogCut(site), flare.LogCut(job))
		cl.Close()
		return
	}
	j.serveCell(cl, site)
}

// admin sends one admin request to a site's parent cell.
func admin(ctx context.Context, c *cell.Cell, site, topic string, headers msgpk.Map, body any) (*fobs.Message, error) {
	b, err := fobs.Encode(&fobs.Message{ID: flare.NewUUID(), Topic: topic, Body: body, Headers: headers})
	if err != nil {
		return nil, err
	}
	r, err := c.Request(ctx, site, "admin", "admin", nil, b, cell.EncodingFOBS)
	if err != nil {
		return nil, err
	}
	return fobs.DecodeMessage(r.Payload)
}

// Ask sends an admin request to a site, asking again while the site is
// not ready for it, and turns the site's refusal into an error.
func Ask(ctx context.Context, c *cell.Cell, site, topic string, headers msgpk.Map, body any) (*fobs.Message, error) {
	m, err := admin(ctx, c, site, topic, headers, body)
	for wait := 200 * time.Millisecond; err != nil && ctx.Err() == nil && strings.Contains(err.Error(), "no callback"); wait *= 2 {
		// Not ready for admin requests yet: ask again.
		if flare.Sleep(ctx, wait) != nil {
			break
		}
		m, err = admin(ctx, c, site, topic, headers, body)
	}
	if err != nil {
		return nil, err
	}
	if m.Headers.String("_rtnCode") == "_error" {
		return m, fmt.Errorf("refused: %v", m.Body)
	}
	if b, ok := m.Body.(string); ok && strings.HasPrefix(b, "NVFLARE_ERROR") {
		return m, fmt.Errorf("refused: %s", flare.LogCut(b))
	}
	return m, nil
}

// shutdownSites tells every connected site to shut down.
func (h *Hub) shutdownSites() {
	h.mu.Lock()
	parents := make(map[string]*cell.Cell, len(h.parents))
	for k, v := range h.parents {
		parents[k] = v
	}
	h.mu.Unlock()
	var wg sync.WaitGroup
	for site, c := range parents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			admin(ctx, c, site, "train.shutdown", msgpk.Map{{Key: "admin_command", Value: "shutdown"}}, "")
		}()
	}
	wg.Wait()
}

// maxPulls bounds a job's results pulled from its sites at once (as
// NVFlare 2.0's wire admits uploads a few at a time).
const maxPulls = 8

// A Job is one job on a hub, as its runtime's flare.ServerWire.
type Job struct {
	hub *Hub
	// ID names the job; Meta is its job meta as sites get it.
	ID   string
	Meta msgpk.Map
	// App is the app zip a site gets (signed for secure sites:
	// deploy.SignedZip).
	App func(site string) ([]byte, error)
	// Sites are the job's sites, deployed when it starts; nil: every
	// site, deployed as it becomes ready.
	Sites []string
	// Submitter is who submitted the job (its user name, org and role),
	// as the sites' authorization sees them.
	Submitter [3]string
	Logf      func(format string, args ...any)

	deployed chan struct{}
	pulls    chan struct{} // results pulled at once (maxPulls)
	mu       sync.Mutex
	tokens   map[string]string // site → the runtime's token
	h        flare.ServerHandler
	svc      *download.Service
	started  map[string]bool
	named    map[string]bool // site → its heartbeats have named the job
	cells    map[string]int  // site → its job cells connected now
	gen      map[string]int  // site → how often its job cells were all gone
	over     bool            // the job has ended
}

var _ flare.ServerWire = (*Job)(nil)

// Job makes a job on the hub; its runtime serves it (Job.Serve).
func (h *Hub) Job(id string, meta msgpk.Map, app func(site string) ([]byte, error), sites []string) *Job {
	return &Job{hub: h, ID: id, Meta: meta, App: app, Sites: sites, Logf: h.Logf, deployed: make(chan struct{}),
		pulls: make(chan struct{}, maxPulls)}
}

// Deployed is closed once the job has been deployed to its sites (those
// it could be: a site that failed is out of the job), for a job with
// fixed Sites.
func (j *Job) Deployed() <-chan struct{} { return j.deployed }

func (j *Job) logf(format string, args ...any) {
	if j.Logf != nil {
		j.Logf(format, args...)
	}
}

// Prepare has nothing to do: a task's arrays are encoded as each site
// asks (they go by reference; the bytes are served from the download
// service).
func (j *Job) Prepare(*flare.Task) error { return nil }

func (j *Job) token(site string) (string, bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	t, ok := j.tokens[site]
	return t, ok
}

// Serve runs the job on the hub for its runtime h until ctx ends (lis is
// not used: the hub listens). If ctx ends for another reason than the
// runtime's end (an abort), the sites are told to abort the job.
func (j *Job) Serve(ctx context.Context, _ net.Listener, h flare.ServerHandler) error {
	j.hub.init()
	j.mu.Lock()
	j.h, j.tokens, j.started, j.named, j.cells, j.gen = h, map[string]string{}, map[string]bool{}, map[string]bool{}, map[string]int{}, map[string]int{}
	j.svc = download.NewService("server."+j.ID, download.Config{})
	j.mu.Unlock()
	defer j.svc.Close()
	j.hub.mu.Lock()
	if _, dup := j.hub.jobs[j.ID]; dup {
		j.hub.mu.Unlock()
		return fmt.Errorf("job %s runs on the hub already", j.ID)
	}
	j.hub.jobs[j.ID] = j
	j.hub.mu.Unlock()
	defer func() {
		j.hub.mu.Lock()
		delete(j.hub.jobs, j.ID)
		j.hub.mu.Unlock()
	}()
	sites := j.Sites
	if sites == nil {
		sites = j.hub.Online()
	}
	var wg sync.WaitGroup
	for _, s := range sites {
		wg.Add(1)
		go func() { defer wg.Done(); j.deploy(ctx, s) }()
	}
	wg.Wait()
	if j.Sites != nil {
		close(j.deployed)
	}
	<-ctx.Done()
	j.mu.Lock()
	j.over = true
	j.mu.Unlock()
	if c := context.Cause(ctx); c != nil && !errors.Is(c, context.Canceled) {
		j.abortSites(c)
	}
	return nil
}

// heartbeat passes a site's heartbeat to the runtime, and deploys a
// late site (first: it just became ready) to a job open to every site. A
// site whose heartbeats named the job and no longer do has lost it (its
// job process ended or failed): it is out of the job.
func (j *Job) heartbeat(ctx context.Context, s register.Site, first bool) {
	site := s.Name
	named := slices.Contains(s.JobIDs, j.ID)
	j.mu.Lock()
	h, tok, in := j.h, "", false
	if j.tokens != nil {
		tok, in = j.tokens[site]
	}
	wasNamed := j.named[site]
	if named && j.named != nil {
		j.named[site] = true
	}
	j.mu.Unlock()
	if h == nil {
		return
	}
	if in && wasNamed && !named {
		j.siteLost(site, "its heartbeat no longer names the job (its job process ended)")
		return
	}
	if in {
		h.Heartbeat(ctx, tok)
		return
	}
	if first && j.Sites == nil {
		go j.deploy(ctx, site)
	}
}

// siteLost takes a site out of the job: it quit or registered again.
func (j *Job) siteLost(site, why string) {
	j.mu.Lock()
	tok, ok := j.tokens[site]
	delete(j.tokens, site)
	if j.Sites == nil && j.started != nil {
		delete(j.started, site) // a job open to every site takes it again when it comes back
	}
	h := j.h
	j.mu.Unlock()
	if ok && h != nil {
		h.Quit(context.Background(), tok)
		j.logf("job %s: site %s left: %s", j.ID, site, why)
	}
}

// deploy signs a site into the job's runtime, sends it the job, and
// starts it there, as NVFlare's scheduler does: the site's resources
// are reserved, the app deployed, then the job started with the
// reservation's token.
func (j *Job) deploy(ctx context.Context, site string) {
	c, ok := j.hub.Parent(site)
	if !ok {
		j.logf("job %s: site %s is not connected", j.ID, site)
		return
	}
	j.mu.Lock()
	if j.started[site] {
		j.mu.Unlock()
		return
	}
	j.started[site] = true
	h := j.h
	j.mu.Unlock()
	tok, err := h.Register(ctx, flare.Registration{Name: site, Project: h.Meta().Project})
	if err != nil {
		j.logf("job %s: site %s: %s", j.ID, site, flare.CallReason(err))
		return
	}
	j.mu.Lock()
	j.tokens[site] = tok
	j.mu.Unlock()
	if err := j.startOn(ctx, c, site); err != nil {
		j.logf("job %s: site %s: %v", j.ID, site, err)
		j.siteLost(site, "it was not deployed")
		return
	}
	j.logf("site %s: job %s deployed and started", site, j.ID)
}

func (j *Job) headers() msgpk.Map {
	name, org, role := j.Submitter[0], j.Submitter[1], j.Submitter[2]
	authz := "true"
	if name == "" {
		// The server's own job (given with --job), not a user's
		// submission: no user to authorize. The app still carries the
		// server's signatures, which a secure site checks.
		name, role, authz = j.hub.Registrar.Name, "project_admin", "false"
	}
	return msgpk.Map{{Key: "job_id", Value: j.ID}, {Key: "app_name", Value: "app"}, {Key: "job_meta", Value: j.Meta},
		{Key: "require_authz", Value: authz}, {Key: "admin_command", Value: "submit_job"},
		{Key: "_submitterName", Value: name}, {Key: "_submitterOrg", Value: org}, {Key: "_submitterRole", Value: role},
		{Key: "_userName", Value: name}, {Key: "_userOrg", Value: org}, {Key: "_userRole", Value: role}}
}

func (j *Job) startOn(ctx context.Context, c *cell.Cell, site string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	app, err := j.App(site)
	if err != nil {
		return fmt.Errorf("its app: %w", err)
	}
	headers := j.headers()
	m, err := Ask(ctx, c, site, "scheduler.check_resource", headers, msgpk.Map{})
	if err != nil {
		return fmt.Errorf("scheduler.check_resource: %w", err)
	}
	token := ""
	if sh, ok := m.Body.(*flare.Shareable); ok {
		token = sh.HeaderString("_resource_reserve_token")
	}
	if _, err := Ask(ctx, c, site, "train.deploy", headers, app); err != nil {
		return fmt.Errorf("train.deploy: %w", err)
	}
	// NVFlare's job process wants the job's sites in its meta, under the
	// enum key JobMetaKey.JOB_CLIENTS.
	var clients []any
	names := j.Sites
	if names == nil {
		j.mu.Lock()
		for name := range j.tokens {
			names = append(names, name)
		}
		j.mu.Unlock()
		sort.Strings(names)
	}
	for _, name := range names {
		clients = append(clients, msgpk.Map{{Key: "name", Value: name}, {Key: "site_config", Value: msgpk.Map{{Key: "allow_log_streaming", Value: false}}}})
	}
	meta := append(append(msgpk.Map{}, j.Meta...), msgpk.KV{Key: fobs.Enum{Type: "nvflare.apis.job_def.JobMetaKey", Name: "JOB_CLIENTS"}, Value: clients})
	start := append(msgpk.Map{}, headers...).With("job_meta", meta)
	start = append(start, msgpk.KV{Key: "_resource_reserve_token", Value: token})
	if _, err := Ask(ctx, c, site, "train.start_job", start, msgpk.Map{}); err != nil {
		return fmt.Errorf("train.start_job: %w", err)
	}
	return nil
}

// abortSites tells the job's sites to stop it (train.abort).
func (j *Job) abortSites(why error) {
	j.mu.Lock()
	var sites []string
	for s := range j.tokens {
		sites = append(sites, s)
	}
	j.mu.Unlock()
	var wg sync.WaitGroup
	for _, site := range sites {
		c, ok := j.hub.Parent(site)
		if !ok {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			h := msgpk.Map{{Key: "job_id", Value: j.ID}, {Key: "admin_command", Value: "abort_job"}}
			if _, err := Ask(ctx, c, site, "train.abort", h, ""); err != nil {
				j.logf("job %s: site %s: train.abort: %v", j.ID, site, err)
			}
		}()
	}
	wg.Wait()
	j.logf("job %s: sites told to abort (%v)", j.ID, why)
}

// serveCell answers a site's job cell until it closes.
// cellGrace is how long a site's job cell may be away before the site is
// taken out of the job (a killed site's connection closes at once; a
// site reconnecting comes back within it).
var cellGrace = 10 * time.Second

// serveCell answers a site's job cell until it closes; a site whose job
// cells are all closed, and stay closed for cellGrace while the job
// runs, is out of the job.
func (j *Job) serveCell(cl *cell.Cell, site string) {
	// The cell counts for its site once a message of its passed the gate
	// (a registered site's token): an idle connection named after a site
	// keeps nothing alive.
	var counted sync.Once
	seen := make(chan struct{})
	cl.OnAdmitted(func() { counted.Do(func() { close(seen) }) })
	go func() {
		select {
		case <-seen:
		case <-cl.Done():
			return
		}
		j.mu.Lock()
		j.cells[site]++
		j.mu.Unlock()
		<-cl.Done()
		j.mu.Lock()
		j.cells[site]--
		j.gen[site]++
		gone, gen := j.cells[site] == 0, j.gen[site]
		j.mu.Unlock()
		if gone {
			time.AfterFunc(cellGrace, func() {
				j.mu.Lock()
				still := j.cells[site] == 0 && j.gen[site] == gen && !j.over
				j.mu.Unlock()
				if still {
					j.siteLost(site, fmt.Sprintf("its job cell disconnected and did not come back within %s", cellGrace))
				}
			})
		}
	}()
	maxBytes := j.hub.MaxModelBytes
	if maxBytes <= 0 {
		maxBytes = 4 << 30
	}
	j.mu.Lock()
	h, svc := j.h, j.svc
	j.mu.Unlock()
	st := stream.New(cl, stream.Limits{})
	defer st.Close()
	js := &jobserve.Job{ID: j.ID, Handler: h, Token: j.token, Service: svc, Download: download.Over(st, maxBytes), Logf: j.Logf,
		WaitTime: 0.5, Pulls: j.pulls}
	js.Serve(st)
	cl.Start()
	<-cl.Done()
}

// A Wire serves one job to NVFlare 2.4+ sites: a hub of its own with the
// job, deployed to every site as it comes.
type Wire struct {
	// TLS, when set, is the listener's TLS (ClientAuth set for mutual TLS).
	TLS *tls.Config
	// Registrar registers the sites.
	Registrar *register.Registrar
	// JobID names the job; App is its app zip as sites get it (signed
	// for secure sites: deploy.SignedZip); Meta its job meta.
	JobID string
	App   []byte
	Meta  msgpk.Map
	// MaxModelBytes bounds a result's arrays (default 4 GiB).
	MaxModelBytes int64
	Logf          func(format string, args ...any)
}

var _ flare.ServerWire = (*Wire)(nil)

// Prepare has nothing to do (see Job.Prepare).
func (w *Wire) Prepare(*flare.Task) error { return nil }

// Serve answers the sites on lis until ctx ends.
func (w *Wire) Serve(ctx context.Context, lis net.Listener, h flare.ServerHandler) error {
	hub := &Hub{TLS: w.TLS, Registrar: w.Registrar, MaxModelBytes: w.MaxModelBytes, Logf: w.Logf}
	hub.init()
	j := hub.Job(w.JobID, w.Meta, func(string) ([]byte, error) { return w.App, nil }, nil)
	hctx, stop := context.WithCancelCause(context.Background())
	defer stop(nil)
	served := make(chan error, 1)
	go func() { served <- hub.Serve(hctx, lis) }()
	jerr := j.Serve(ctx, nil, h)
	// The hub stops for the job's reason: at its end it shuts the sites
	// down; on a signal (flare.ErrInterrupted) it leaves them running.
	stop(context.Cause(ctx))
	if err := <-served; err != nil {
		return err
	}
	return jerr
}
