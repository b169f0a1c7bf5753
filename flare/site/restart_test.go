package site

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/cellnet/cell"
	"github.com/flarego/flarego/flare/cellnet/fobs"
	"github.com/flarego/flarego/flare/cellnet/lobs"
	"github.com/flarego/flarego/flare/cellnet/msgpk"
	"github.com/flarego/flarego/flare/cellnet/stream"
	"github.com/flarego/flarego/flare/internal/celltest"
	"github.com/flarego/flarego/flare/internal/flaretest"
	"github.com/flarego/flarego/flare/np"
	"github.com/flarego/flarego/persistor"
	"github.com/flarego/flarego/persistor/pickle"
)

// fakeServer is an NVFlare 2.8 server in miniature, over in-memory links:
// it registers the site's parent cell, and answers its job cell with one
// train task per get_task.
type fakeServer struct {
	t                *testing.T
	pki              *celltest.PKI
	cert             []byte
	key              any
	parents          chan *cell.Cell
	tokens           <-chan string
	taskGiven, quits chan string
	submitted        chan *flare.Shareable
	mu               sync.Mutex
	links            []cell.Link
	// events are the parent cell's heartbeats ("heartbeat [job ids]") and
	// outcome reports ("report JOB CODE"), in order; jobStreams the
	// server ends of the job cells.
	events     []string
	jobStreams chan *stream.Streamer
	// refuseJobDials is how many job cell dials fail (a network cut
	// just after a deploy) before they are answered.
	refuseJobDials int
	// holdTasks, when set, leaves every get_task after the first
	// unanswered until it is closed: a server job that has handed out
	// its last task.
	holdTasks chan struct{}
	given     int
}

func (f *fakeServer) event(e string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.events = append(f.events, e)
}

func (f *fakeServer) eventLog() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.events...)
}

func (f *fakeServer) dial(ctx context.Context, fqcn string) (cell.Link, error) {
	f.mu.Lock()
	if strings.Contains(fqcn, ".") && f.refuseJobDials > 0 {
		f.refuseJobDials--
		f.mu.Unlock()
		return nil, errors.New("dial tcp 172.22.0.2:8002: connect: no route to host")
	}
	f.mu.Unlock()
	a, b := cell.Pipe()
	f.mu.Lock()
	f.links = append(f.links, a)
	f.mu.Unlock()
	srv := cell.New(b, "server")
	if !strings.Contains(fqcn, ".") {
		certPEM, key := f.pki.Leaf(f.t, "server1")
		f.tokens = celltest.FakeRegistrar(f.t, srv, f.pki, "server1", certPEM, key)
		srv.Handle("task", "heart_beat", func(req *cell.Message) *cell.Message {
			f.event(fmt.Sprint("heartbeat ", req.Header("job_ids")))
			return &cell.Message{Headers: msgpk.Map{{Key: "message", Value: "Heartbeat response"}}}
		})
		srv.Handle("task", "report_job_failure", func(req *cell.Message) *cell.Message {
			c, err := lobs.Decode(req.Payload, lobs.V27)
			if err != nil {
				f.t.Error(err)
				return nil
			}
			v, err := fobs.Decode(c, fobs.Options{})
			d, _ := v.(msgpk.Map)
			if err != nil || d == nil {
				f.t.Errorf("report_job_failure payload %v %v", v, err)
				return nil
			}
			code, _ := d.Get("code")
			f.event(fmt.Sprint("report ", d.String("job_id"), " ", code))
			return nil
		})
		srv.Handle("task", "quit", func(*cell.Message) *cell.Message { f.quits <- fqcn; return &cell.Message{} })
		f.parents <- srv
		return a, nil
	}
	st := stream.New(srv, stream.Limits{})
	if f.jobStreams != nil {
		f.jobStreams <- st
	}
	ok := func() *cell.Message {
		sh := flare.NewShareable()
		sh.SetHeader(flare.HeaderRC, flare.RCOK)
		b, _ := fobs.Encode(sh)
		return &cell.Message{Payload: b}
	}
	st.Handle("aux_communication", "__sync_runner__", func(*cell.Message) *cell.Message { return ok() })
	st.Handle("aux_communication", "__task_check__", func(*cell.Message) *cell.Message { return ok() })
	st.Handle("server_command", "get_task", func(*cell.Message) *cell.Message {
		f.mu.Lock()
		f.given++
		n := f.given
		f.mu.Unlock()
		if f.holdTasks != nil && n > 1 {
			<-f.holdTasks
			return nil
		}
		sh := flare.NewShareable()
		sh.SetHeader(flare.HeaderTaskName, "train")
		sh.SetHeader(flare.HeaderTaskID, flare.NewUUID())
		sh.DXO = &flare.DXO{Kind: flare.KindWeights, Data: []flare.NamedArray{{Name: np.Key, Array: persistor.FromFloat32([]float32{1, 2}, 2)}}, Meta: &pickle.Dict{}}
		b, _ := fobs.Encode(sh)
		// Tests read only the first few; a job cell that keeps asking
		// must still get its tasks (a full channel would leave its
		// get_task unanswered).
		select {
		case f.taskGiven <- fqcn:
		default:
		}
		return &cell.Message{Payload: b}
	})
	st.Handle("server_command", "submit_update", func(req *cell.Message) *cell.Message {
		b, _ := fobs.Encode("")
		return &cell.Message{Payload: b}
	})
	return a, nil
}

// restart drops every link, as a server that restarts does.
func (f *fakeServer) restart() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, l := range f.links {
		l.Close()
	}
	f.links = nil
}

func adminRequest(t *testing.T, srv *cell.Cell, topic string, headers msgpk.Map, body any) *fobs.Message {
	t.Helper()
	b, err := fobs.Encode(&fobs.Message{ID: flare.NewUUID(), Topic: topic, Body: body, Headers: headers})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := srv.Request(ctx, "site-1", "admin", "admin", nil, b, cell.EncodingFOBS)
	if err != nil {
		t.Fatalf("%s: %v", topic, err)
	}
	m, err := decodeAdmin(r.Payload)
	if err != nil {
		t.Fatalf("%s reply: %v", topic, err)
	}
	return m
}

// writeKit writes a 2.8 site kit: fed_client.json, the site's
// certificate and key, the project's root.
func writeKit(t *testing.T, p *celltest.PKI) *flare.StartupKit {
	return writeKitAt(t, p, "localhost:1", "clear")
}

// writeKitAt is writeKit for a server at target, with connection_security sec.
func writeKitAt(t *testing.T, p *celltest.PKI, target, sec string) *flare.StartupKit {
	dir := filepath.Join(t.TempDir(), "site-1", "startup")
	os.MkdirAll(dir, 0o755)
	cert, key := p.Leaf(t, "site-1")
	os.WriteFile(filepath.Join(dir, "client.crt"), cert, 0o600)
	os.WriteFile(filepath.Join(dir, "client.key"), pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600)
	os.WriteFile(filepath.Join(dir, "rootCA.pem"), p.RootPEM(), 0o600)
	os.WriteFile(filepath.Join(dir, "fed_client.json"), []byte(`{"format_version": 2,
  "servers": [{"name": "proj", "service": {"target": "`+target+`", "scheme": "grpc"}, "identity": "server1"}],
  "client": {"ssl_private_key": "client.key", "ssl_cert": "client.crt", "ssl_root_cert": "rootCA.pem", "fqsn": "site-1", "is_leaf": true, "connection_security": "`+sec+`"}}`), 0o600)
	k, err := flare.LoadStartupKit(filepath.Join(dir, "fed_client.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !k.CellNet() {
		t.Fatal("a 2.8 kit not recognised")
	}
	return k
}

// The site runs a job; the server then restarts in the middle of it: the
// site dials again and registers again, reports the job it lost as
// failed, and takes the next admin request; train.shutdown ends it.
// hostedSite is a Site run against a fakeServer, registered, with the
// NPTrainer app zipped for deploying.
type hostedSite struct {
	s    *Site
	log  *flaretest.Log
	srv  *cell.Cell // the server's end of the parent cell
	zip  []byte
	done chan error
}

// runSite starts a site on f (heartbeats every hb) and waits for its
// registration; ctx bounds its run.
func runSite(ctx context.Context, t *testing.T, f *fakeServer, kit *flare.StartupKit, hb time.Duration) *hostedSite {
	t.Helper()
	app := filepath.Join(t.TempDir(), "app", "config")
	os.MkdirAll(app, 0o755)
	os.WriteFile(filepath.Join(app, "config_fed_client.json"), []byte(`{"format_version": 2,
  "executors": [{"tasks": ["train"], "executor": {"path": "nvflare.app_common.np.np_trainer.NPTrainer", "args": {}}}]}`), 0o600)
	zip, err := flare.ZipApp(filepath.Dir(app))
	if err != nil {
		t.Fatal(err)
	}
	h := &hostedSite{log: &flaretest.Log{T: t}, zip: zip, done: make(chan error, 1)}
	h.s = &Site{Name: "site-1", Kit: kit, Workspace: filepath.Dir(kit.Dir), Logf: h.log.Logf, Heartbeat: hb, GiveUp: 20 * time.Second,
		Tasks: func(dir string) (map[string]flare.Executor, error) {
			ex, err := np.New(nil)
			return map[string]flare.Executor{"train": ex}, err
		}, dialLink: f.dial}
	go func() { h.done <- h.s.Run(ctx) }()
	h.srv = <-f.parents
	<-f.tokens
	waitLog(t, h.log, "registered with server1", 1)
	return h
}

// jobHeaders are the headers of job1's admin requests.
var jobHeaders = msgpk.Map{{Key: "job_id", Value: "job1"}, {Key: "app_name", Value: "app"},
	{Key: "job_meta", Value: msgpk.Map{{Key: "name", Value: "hello"}, {Key: "job_id", Value: "job1"}}}}

// startJob deploys and starts job1, as the server's scheduler does.
func (h *hostedSite) startJob(t *testing.T) {
	t.Helper()
	if m := adminRequest(t, h.srv, "train.deploy", jobHeaders, h.zip); m.Headers.String("_rtnCode") != "_ok" || m.Body != "deployed app to site-1" {
		t.Fatalf("deploy: %+v", m)
	}
	if m := adminRequest(t, h.srv, "train.start_job", jobHeaders, ""); m.Body != "Start the client app..." {
		t.Fatalf("start_job: %+v", m)
	}
}

func TestSiteSurvivesServerRestart(t *testing.T) {
	p := celltest.NewPKI(t)
	kit := writeKit(t, p)
	f := &fakeServer{t: t, pki: p, parents: make(chan *cell.Cell, 4), taskGiven: make(chan string, 16), quits: make(chan string, 4)}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	h := runSite(ctx, t, f, kit, 50*time.Millisecond)
	log, srv, done := h.log, h.srv, h.done
	if m := adminRequest(t, srv, "scheduler.check_resource", jobHeaders, msgpk.Map{}); m.Topic != "reply_scheduler.check_resource" {
		t.Fatalf("check_resource: %+v", m)
	}
	h.startJob(t)
	if m := adminRequest(t, srv, "train.frobnicate", jobHeaders, ""); m.Headers.String("_rtnCode") != "_error" {
		t.Fatalf("an unknown topic: %+v", m)
	}
	// The job cell takes two tasks; then the server restarts.
	for i := 0; i < 2; i++ {
		select {
		case who := <-f.taskGiven:
			if who != "site-1.job1" {
				t.Fatalf("task given to %s", who)
			}
		case <-ctx.Done():
			t.Fatal("the job cell asked for no task")
		}
	}
	f.restart()
	srv = <-f.parents // dialled again
	<-f.tokens
	waitLog(t, log, "registered with server1", 2)
	for deadline := time.Now().Add(10 * time.Second); log.Count("registered with server1") < 2 || log.Count("job job1 failed") < 1; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the site did not register again and report its job:\n%s", strings.Join(log.Lines(), "\n"))
		}
	}
	if m := adminRequest(t, srv, "train.check_status", nil, ""); !strings.Contains(m.Body.(string), "0 job(s) running") {
		t.Fatalf("status after the restart: %+v", m)
	}
	if m := adminRequest(t, srv, "train.shutdown", nil, ""); m.Body != "Shutdown the client..." {
		t.Fatalf("shutdown: %+v", m)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("the site did not stop after train.shutdown")
	}
	if q := <-f.quits; q != "site-1" {
		t.Fatalf("quit from %s", q)
	}
	for _, want := range []string{"connection to the server lost", "job job1 deployed", "train.frobnicate is not supported"} {
		if log.Count(want) == 0 {
			t.Errorf("no %q in the log:\n%s", want, strings.Join(log.Lines(), "\n"))
		}
	}
}

func waitLog(t *testing.T, log *flaretest.Log, text string, n int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); log.Count(text) < n; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q (x%d) in the log:\n%s", text, n, strings.Join(log.Lines(), "\n"))
		}
	}
}

// A job whose executor flarego does not implement fails to start with a
// reply that says so; the site stays up and takes the next request.
func TestUnknownExecutorRefused(t *testing.T) {
	p := celltest.NewPKI(t)
	f := &fakeServer{t: t, pki: p, parents: make(chan *cell.Cell, 4), taskGiven: make(chan string, 16), quits: make(chan string, 4)}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	h := runSite(ctx, t, f, writeKit(t, p), time.Second)
	app := filepath.Join(t.TempDir(), "app", "config")
	os.MkdirAll(app, 0o755)
	os.WriteFile(filepath.Join(app, "config_fed_client.json"), []byte(`{"format_version": 2,
  "executors": [{"tasks": ["train"], "executor": {"path": "nvflare.app_opt.pt.client_api_launcher_executor.PTClientAPILauncherExecutor", "args": {}}}]}`), 0o600)
	zip, err := flare.ZipApp(filepath.Dir(app))
	if err != nil {
		t.Fatal(err)
	}
	h.s.Tasks = func(dir string) (map[string]flare.Executor, error) {
		job, err := flare.LoadJob(dir)
		if err != nil {
			return nil, err
		}
		reg := &flare.Registry{}
		np.Register(reg)
		ex, err := reg.Executor(job.Client.Executors[0].Executor)
		return map[string]flare.Executor{"train": ex}, err
	}
	if m := adminRequest(t, h.srv, "train.deploy", jobHeaders, zip); m.Headers.String("_rtnCode") != "_ok" {
		t.Fatalf("deploy: %+v", m)
	}
	m := adminRequest(t, h.srv, "train.start_job", jobHeaders, "")
	if body, _ := m.Body.(string); m.Headers.String("_rtnCode") != "_error" || !strings.Contains(body, "PTClientAPILauncherExecutor") || !strings.Contains(body, "not implemented") {
		t.Fatalf("start_job: %+v", m)
	}
	if m := adminRequest(t, h.srv, "train.check_status", nil, ""); !strings.Contains(m.Body.(string), "0 job(s) running") {
		t.Fatalf("status: %+v", m)
	}
}

// The server cannot be reached when the site dials a job's cell just
// after the deploy (a network cut): the site retries, says so, and the
// job runs when the server answers again.
func TestJobCellDialRetried(t *testing.T) {
	p := celltest.NewPKI(t)
	kit := writeKit(t, p)
	f := &fakeServer{t: t, pki: p, parents: make(chan *cell.Cell, 4), taskGiven: make(chan string, 16), quits: make(chan string, 4), refuseJobDials: 3}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	h := runSite(ctx, t, f, kit, 50*time.Millisecond)
	h.startJob(t)
	select {
	case who := <-f.taskGiven:
		if who != "site-1.job1" {
			t.Fatalf("task given to %s", who)
		}
	case <-ctx.Done():
		t.Fatalf("the job cell asked for no task:\n%s", strings.Join(h.log.Lines(), "\n"))
	}
	if h.log.Count("job cell site-1.job1: waiting for the server") != 1 || h.log.Count("job cell site-1.job1 connected after") != 1 {
		t.Errorf("the site did not say it waited for the server:\n%s", strings.Join(h.log.Lines(), "\n"))
	}
	cancel() // the site stops, and its job with it, before the test ends
	<-h.done
}
