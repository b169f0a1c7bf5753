package console_test

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/cellnet/cell"
	"github.com/flarego/flarego/flare/cellnet/conn"
	"github.com/flarego/flarego/flare/cellnet/console"
	"github.com/flarego/flarego/flare/cellnet/deploy"
	"github.com/flarego/flarego/flare/cellnet/fobs"
	"github.com/flarego/flarego/flare/cellnet/msgpk"
	"github.com/flarego/flarego/flare/cellnet/register"
	"github.com/flarego/flarego/flare/cellnet/serverwire"
	"github.com/flarego/flarego/flare/cellnet/stream"
	"github.com/flarego/flarego/flare/internal/celltest"
	"github.com/flarego/flarego/flare/internal/flaretest"
	"github.com/flarego/flarego/flare/jobs"
	"github.com/flarego/flarego/flare/np"
	"github.com/flarego/flarego/flare/server"
	"github.com/flarego/flarego/flare/site"
	"github.com/flarego/flarego/persistor/pickle"
)

// system is a flarego server (hub, job store, admin console) on
// loopback, with the project's PKI.
type system struct {
	p      *celltest.PKI
	target string
	store  string
	log    *flaretest.Log
	mgr    *jobs.Manager
	cancel context.CancelFunc
	done   chan struct{}
}

func startSystem(t *testing.T) *system {
	t.Helper()
	p := celltest.NewPKI(t)
	certPEM, key := p.Leaf(t, "server1")
	reg := &register.Registrar{Name: "server1", CertPEM: certPEM, Key: key, Root: p.Root}
	log := &flaretest.Log{T: t}
	hub := &serverwire.Hub{Registrar: reg, Logf: log.Logf}
	ws := t.TempDir()
	runner := jobs.RunnerFunc(func(ctx context.Context, r *jobs.Run) error {
		runDir := filepath.Join(r.Dir, "app_server")
		os.MkdirAll(runDir, 0o700)
		cfg := flaretest.ServerConfig(len(r.Sites), 3, 0)
		cfg.Components[0].Path = np.PersistorPath
		regy := &flare.Registry{}
		np.RegisterPersistor(regy, runDir)
		srv, err := server.New(cfg, regy)
		if err != nil {
			return err
		}
		srv.Logf = log.Logf
		app, err := flare.ZipApp(filepath.Join(r.JobDir, "app"))
		if err != nil {
			return err
		}
		j := hub.Job(r.Meta.JobID, msgpk.Map{{Key: "name", Value: r.Meta.Name}, {Key: "job_id", Value: r.Meta.JobID}},
			func(string) ([]byte, error) { return app, nil }, r.Sites)
		j.Submitter = [3]string{r.Meta.SubmitterName, r.Meta.SubmitterOrg, r.Meta.SubmitterRole}
		srv.Wire = j
		return srv.Serve(ctx, nil)
	})
	store := filepath.Join(ws, "jobs-storage")
	mgr, err := jobs.Open(jobs.Config{Store: store, RunRoot: ws, Runner: runner, Online: hub.Online, Logf: log.Logf, Interval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	hub.OnReady = func(string) { mgr.Wake() }
	ctx, cancel := context.WithCancel(context.Background())
	cs := &console.Server{Registrar: reg, Jobs: mgr, Online: hub.Online, Logf: log.Logf, RequireSigned: true, Shutdown: cancel,
		Ask: func(ctx context.Context, s, topic string, h msgpk.Map, body any) (*fobs.Message, error) {
			c, ok := hub.Parent(s)
			if !ok {
				return nil, os.ErrNotExist
			}
			return serverwire.Ask(ctx, c, s, topic, h, body)
		}}
	hub.Admin = cs.Attach
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &system{p: p, target: lis.Addr().String(), store: store, log: log, mgr: mgr, cancel: cancel, done: make(chan struct{})}
	go mgr.Serve(ctx)
	go func() { hub.Serve(ctx, lis); close(s.done) }()
	t.Cleanup(func() { cancel(); <-s.done })
	return s
}

// startSite runs a flarego site with NPTrainer.
func (s *system) startSite(t *testing.T, ctx context.Context, name string) {
	dir := filepath.Join(t.TempDir(), name, "startup")
	os.MkdirAll(dir, 0o755)
	cert, key := s.p.Leaf(t, name)
	os.WriteFile(filepath.Join(dir, "client.crt"), cert, 0o600)
	os.WriteFile(filepath.Join(dir, "client.key"), pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600)
	os.WriteFile(filepath.Join(dir, "rootCA.pem"), s.p.RootPEM(), 0o600)
	kit, _ := json.Marshal(map[string]any{"format_version": 2,
		"servers": []any{map[string]any{"name": "proj", "service": map[string]any{"target": s.target, "scheme": "grpc"}, "identity": "server1"}},
		"client":  map[string]any{"ssl_private_key": "client.key", "ssl_cert": "client.crt", "ssl_root_cert": "rootCA.pem", "connection_security": "clear"}})
	os.WriteFile(filepath.Join(dir, "fed_client.json"), kit, 0o600)
	k, err := flare.LoadStartupKit(filepath.Join(dir, "fed_client.json"))
	if err != nil {
		t.Fatal(err)
	}
	st := &site.Site{Name: name, Kit: k, Workspace: filepath.Dir(k.Dir), Secure: true, Logf: s.log.Logf, GiveUp: 10 * time.Second,
		Tasks: func(string) (map[string]flare.Executor, error) {
			ex, err := np.New(nil)
			return map[string]flare.Executor{"train": ex}, err
		}}
	go st.Run(ctx)
}

func (s *system) identity(t *testing.T, name, org, role string) *register.Identity {
	cert, key := s.p.AdminLeaf(t, name, org, role)
	return &register.Identity{Name: name, Project: "proj", CertPEM: cert, Key: key, Root: s.p.Root, ServerIdentity: "server1"}
}

var clear = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}

func (s *system) dial(t *testing.T, id *register.Identity) *console.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := console.Dial(ctx, s.target, clear, id)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// helloJob writes a hello-numpy job folder.
func helloJob(t *testing.T) string {
	dir := filepath.Join(t.TempDir(), "hello-numpy")
	os.MkdirAll(filepath.Join(dir, "app", "config"), 0o755)
	os.WriteFile(filepath.Join(dir, "meta.json"), []byte(`{"name": "hello-numpy", "resource_spec": {}, "min_clients": 2, "deploy_map": {"app": ["@ALL"]}}`), 0o600)
	os.WriteFile(filepath.Join(dir, "app", "config", "config_fed_server.json"), []byte(`{"format_version": 2}`), 0o600)
	os.WriteFile(filepath.Join(dir, "app", "config", "config_fed_client.json"), []byte(`{"format_version": 2,
  "executors": [{"tasks": ["train"], "executor": {"path": "nvflare.app_common.np.np_trainer.NPTrainer", "args": {}}}]}`), 0o600)
	return dir
}

func do(t *testing.T, c *console.Client, cmd string) *console.Reply {
	t.Helper()
	r, err := c.Do(context.Background(), cmd)
	if err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	return r
}

func waitJob(t *testing.T, c *console.Client, id string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		r := do(t, c, "get_job_meta "+id)
		meta, _ := r.Meta["job_meta"].(map[string]any)
		if st, _ := meta["status"].(string); strings.HasPrefix(st, "FINISHED") {
			return meta
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s: %v", id, meta)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// An admin submits hello-numpy through flarego's own admin client; the
// scheduler waits for both sites, runs it, and the admin downloads the
// results: the model in the workspace.
func TestAdminRunsAJobAndDownloadsIt(t *testing.T) {
	s := startSystem(t)
	admin := s.dial(t, s.identity(t, "admin@nvidia.com", "nvidia", "project_admin"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	id, err := admin.Submit(ctx, helloJob(t))
	if err != nil {
		t.Fatal(err)
	}
	r := do(t, admin, "get_job_meta "+id)
	if m, _ := r.Meta["job_meta"].(map[string]any); m["status"] != jobs.Submitted {
		t.Fatalf("with no sites the job is %v", m["status"])
	}
	s.startSite(t, ctx, "site-1")
	s.startSite(t, ctx, "site-2")
	meta := waitJob(t, admin, id)
	if meta["status"] != jobs.Completed {
		t.Fatalf("job: %v\n%s", meta, strings.Join(s.log.Lines(), "\n"))
	}
	r = do(t, admin, "list_jobs")
	if jl, _ := r.Meta["jobs"].([]any); len(jl) != 1 {
		t.Fatalf("list_jobs: %v", r.Meta)
	}
	st := do(t, admin, "check_status server")
	if cl, _ := st.Meta["clients"].([]any); len(cl) != 2 || st.Meta["server_status"] != "stopped" {
		t.Fatalf("check_status server: %v", st.Meta)
	}
	if r := do(t, admin, "check_status client"); r.Err() != nil || len(r.Meta["client_status"].([]any)) != 2 {
		t.Fatalf("check_status client: %v %v", r.Err(), r.Meta)
	}
	if r := do(t, admin, "shutdown server"); r.Status() != "clients_running" {
		t.Fatalf("shutdown server with sites up: %v", r.Meta)
	}
	out, err := admin.Download(ctx, id, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	c, err := (&np.Persistor{Path: filepath.Join(out, "workspace", "app_server", "models", "server.npy")}).Load()
	if err != nil {
		t.Fatal(err)
	}
	got, _ := c.Model.Get(np.Key).Float32s()
	if got[0] != 4 || got[8] != 12 {
		t.Fatalf("downloaded model %v", got)
	}
	for _, f := range []string{"meta.json", "job/hello-numpy/meta.json", "job/hello-numpy/.__nvfl_sig.json"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Errorf("download: %v", err)
		}
	}
	if r := do(t, admin, "delete_job "+id); r.Err() != nil {
		t.Fatal(r.Err())
	}
}

// What a session may not do, each refused with a reason while the
// session goes on: commands without a login, a member's submission and
// shutdown, a job not signed by its submitter, bad job ids, unknown
// commands, hostile uploads.
func TestAdminRefusals(t *testing.T) {
	s := startSystem(t)
	ctx := context.Background()
	member := s.dial(t, s.identity(t, "viewer@nvidia.com", "nvidia", "member"))
	if _, err := member.Submit(ctx, helloJob(t)); err == nil || !strings.Contains(err.Error(), "not_authorized") {
		t.Fatalf("a member's submission: %v", err)
	}
	if r := do(t, member, "shutdown all"); r.Status() != "not_authorized" {
		t.Fatalf("a member's shutdown: %v", r.Meta)
	}
	if r := do(t, member, "list_jobs"); r.Err() != nil {
		t.Fatalf("a member lists jobs: %v", r.Err())
	}
	admin := s.dial(t, s.identity(t, "admin@nvidia.com", "nvidia", "project_admin"))
	for cmd, want := range map[string]string{
		"get_job_meta nosuchjob":                            "invalid_job_id",
		"get_job_meta 00000000-0000-4000-8000-000000000000": "invalid_job_id",
		"abort_job":              "syntax_error",
		"no_such_command":        "error",
		"list_jobs -m x":         "syntax_error",
		"check_status client x1": "invalid_target",
		"submit_job hello":       "syntax_error", // a job comes through the upload stream
	} {
		if r := do(t, admin, cmd); r.Status() != want {
			t.Errorf("%s: status %q, want %q (%v)", cmd, r.Status(), want, r.Items)
		}
	}
	// A job zip with no signatures, and one signed by someone else.
	unsigned, err := flare.ZipFolder(helloJob(t), "hello-numpy")
	if err != nil {
		t.Fatal(err)
	}
	if r, err := admin.Upload(ctx, "job_mgmt.submit_job hello-numpy", unsigned); err != nil || r.Status() != "invalid_job_def" {
		t.Fatalf("an unsigned job: %v %v", err, r)
	}
	other, otherKey := s.p.AdminLeaf(t, "lead@nvidia.com", "nvidia", "lead")
	byOther, err := deploy.SignedZip(helloJob(t), otherKey, other)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := admin.Upload(ctx, "job_mgmt.submit_job hello-numpy", prefix(t, byOther, "hello-numpy")); err != nil ||
		r.Status() != "invalid_job_def" || !strings.Contains(r.Err().Error(), "not by its submitter") {
		t.Fatalf("a job signed by another: %v %v", err, r)
	}
	if n := len(s.mgr.List()); n != 0 {
		t.Fatalf("%d refused job(s) stored", n)
	}
	// Hostile chunks on a raw session: each refused, the session intact.
	raw := rawSession(t, s)
	for name, sh := range map[string]*flare.Shareable{
		"size lies":  chunk("t1", 0, []byte("abc"), 99, true, 3),
		"huge total": chunk("t2", 0, []byte("abc"), 3, true, jobs.MaxJobBytes+1),
		"no context": chunk("t3", 0, []byte("abc"), 3, true, -1),
		"late chunk": chunk("t4", 5, []byte("abc"), 3, true, -1),
		"too long":   chunk("t5", 0, []byte("abcdef"), 6, true, 3),
	} {
		if rc := raw.send(t, sh); rc != "BAD_REQUEST_DATA" {
			t.Errorf("%s: rc %q", name, rc)
		}
	}
	// An upload whose command has no session token: refused at its
	// first chunk, before anything is kept.
	sh := chunk("t6", 0, []byte("x"), 1, true, 1)
	sh.Headers.Set("ObjectStreamer.CTX", &pickle.Dict{Items: []pickle.Item{{Key: "conn_data", Value: `{"data":[{"type":"command","data":"job_mgmt.submit_job x"}],"meta":{}}`},
		{Key: "FileStreamer.file_size", Value: int64(1)}}})
	if rc := raw.send(t, sh); rc != "BAD_REQUEST_DATA" {
		t.Errorf("an upload without a token: rc %q", rc)
	}
	if r := do(t, admin, "list_jobs"); r.Err() != nil || len(s.mgr.List()) != 0 {
		t.Fatalf("after the hostile uploads: %v %v", r.Err(), s.mgr.List())
	}
}

func prefix(t *testing.T, zipData []byte, dir string) []byte {
	t.Helper()
	tmp := t.TempDir()
	if err := flare.UnzipApp(zipData, filepath.Join(tmp, dir)); err != nil {
		t.Fatal(err)
	}
	b, err := flare.ZipFolder(filepath.Join(tmp, dir), dir)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// chunk is one ObjectStreamer chunk; total < 0 leaves the context out.
func chunk(tx string, seq int64, data []byte, size int64, eof bool, total int64) *flare.Shareable {
	sh := flare.NewShareable()
	sh.SetHeader("ObjectStreamer.CHANNEL", "hci.upload")
	sh.SetHeader("ObjectStreamer.TOPIC", "folder")
	sh.SetHeader("ObjectStreamer.TX_ID", tx)
	sh.SetHeader("ObjectStreamer.SEQ", seq)
	if total >= 0 {
		sh.SetHeader("ObjectStreamer.CTX", &pickle.Dict{Items: []pickle.Item{{Key: "conn_data", Value: "{}"}, {Key: "FileStreamer.file_size", Value: total}}})
	}
	sh.Extra = []pickle.Item{{Key: "Streamer.data", Value: data}, {Key: "Streamer.size", Value: size}, {Key: "Streamer.eof", Value: eof}}
	return sh
}

type rawConn struct {
	st *stream.Streamer
}

// rawSession is a registered admin cell that has not logged in.
func rawSession(t *testing.T, s *system) *rawConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	fqcn := "_admin_" + flare.NewUUID()
	cn, err := conn.Dial(ctx, s.target, fqcn, clear...)
	if err != nil {
		t.Fatal(err)
	}
	c := cell.New(cn, fqcn)
	t.Cleanup(func() { c.Close() })
	id := s.identity(t, "raw@nvidia.com", "nvidia", "project_admin")
	id.Type = "admin"
	if _, err := register.Register(ctx, c, id, ""); err != nil {
		t.Fatal(err)
	}
	st := stream.New(c, stream.Limits{})
	t.Cleanup(st.Close)
	return &rawConn{st: st}
}

func (r *rawConn) send(t *testing.T, sh *flare.Shareable) string {
	t.Helper()
	b, err := fobs.Encode(sh)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	m, err := r.st.Request(ctx, "server", console.ChannelAux, console.TopicObjRequest, nil, b, cell.EncodingFOBS)
	if err != nil {
		t.Fatalf("the session broke: %v", err)
	}
	v, err := fobs.DecodeBytes(m.Payload, fobs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return v.(*flare.Shareable).ReturnCode()
}

// A site's certificate logs no one in as an admin, and a session from
// another project's root does not register.
func TestAdminLoginRefused(t *testing.T) {
	s := startSystem(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	other := celltest.NewPKI(t)
	cert, key := other.AdminLeaf(t, "admin@nvidia.com", "nvidia", "project_admin")
	id := &register.Identity{Name: "admin@nvidia.com", Project: "proj", CertPEM: cert, Key: key, Root: s.p.Root, ServerIdentity: "server1"}
	if _, err := console.Dial(ctx, s.target, clear, id); err == nil {
		t.Fatal("an admin of another project logged in")
	}
	// A certificate for a name, with the key of another.
	good := s.identity(t, "admin@nvidia.com", "nvidia", "project_admin")
	_, wrongKey := s.p.AdminLeaf(t, "admin@nvidia.com", "nvidia", "project_admin")
	good.Key = wrongKey
	if _, err := console.Dial(ctx, s.target, clear, good); err == nil {
		t.Fatal("a login with the wrong key")
	}
	// A site's certificate (no role) does not make an admin session.
	siteCert, siteKey := s.p.Leaf(t, "site-1")
	site := &register.Identity{Name: "site-1", Project: "proj", CertPEM: siteCert, Key: siteKey, Root: s.p.Root, ServerIdentity: "server1"}
	if _, err := console.Dial(ctx, s.target, clear, site); err == nil || !strings.Contains(err.Error(), "registers as an admin") {
		t.Fatalf("a site's certificate as an admin: %v", err)
	}
}

// An admin's certificate does not register as a site (it would get the
// jobs and the models, and send results).
func TestAdminCertificateIsNoSite(t *testing.T) {
	s := startSystem(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	id := s.identity(t, "boss", "nvidia", "project_admin") // a name a site's cell could have (no dots)
	cn, err := conn.Dial(ctx, s.target, id.Name, clear...)
	if err != nil {
		t.Fatal(err)
	}
	c := cell.New(cn, id.Name)
	defer c.Close()
	if _, err := register.Register(ctx, c, id, ""); err == nil || !strings.Contains(err.Error(), "registers as a site with") {
		t.Fatalf("an admin's certificate as a site: %v", err)
	}
}

// NVFlare's default policy: a lead clones and manages only its own
// jobs; an org_admin submits none.
func TestAdminRolesPolicy(t *testing.T) {
	s := startSystem(t)
	ctx := context.Background()
	admin := s.dial(t, s.identity(t, "admin@nvidia.com", "nvidia", "project_admin"))
	id, err := admin.Submit(ctx, helloJob(t))
	if err != nil {
		t.Fatal(err)
	}
	lead := s.dial(t, s.identity(t, "lead@nvidia.com", "nvidia", "lead"))
	for _, cmd := range []string{"clone_job " + id, "abort_job " + id, "delete_job " + id, "job_mgmt.download_job " + id} {
		if r := do(t, lead, cmd); r.Status() != "not_authorized" {
			t.Errorf("a lead's %s of another's job: %v", cmd, r.Meta)
		}
	}
	mine, err := lead.Submit(ctx, helloJob(t))
	if err != nil {
		t.Fatalf("a lead submits: %v", err)
	}
	if r := do(t, lead, "clone_job "+mine); r.Err() != nil {
		t.Fatalf("a lead clones its own job: %v", r.Err())
	}
	orgAdmin := s.dial(t, s.identity(t, "org@nvidia.com", "nvidia", "org_admin"))
	if _, err := orgAdmin.Submit(ctx, helloJob(t)); err == nil || !strings.Contains(err.Error(), "not_authorized") {
		t.Fatalf("an org_admin's submission: %v", err)
	}
	if r := do(t, orgAdmin, "abort_job "+mine); r.Err() != nil {
		t.Fatalf("an org_admin aborts a job of its org: %v", r.Err())
	}
}
