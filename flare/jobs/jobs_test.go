package jobs

import (
	"archive/zip"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// jobZip makes a job zip of the given files (path → content).
func jobZip(t testing.TB, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for name, content := range files {
		w, err := zw.Create(name)
		if err != nil {
			t.Fatal(err)
		}
		w.Write([]byte(content))
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func helloJob(t testing.TB, meta string) []byte {
	return jobZip(t, map[string]string{
		"hello/meta.json":                         meta,
		"hello/app/config/config_fed_server.json": `{"format_version": 2}`,
		"hello/app/config/config_fed_client.json": `{"format_version": 2}`,
	})
}

const allMeta = `{"name": "hello", "resource_spec": {}, "min_clients": 2, "deploy_map": {"app": ["@ALL"]}}`

type sites struct {
	mu    sync.Mutex
	names []string
}

func (s *sites) set(n ...string) {
	s.mu.Lock()
	s.names = n
	s.mu.Unlock()
}

func (s *sites) online() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.names...)
}

func open(t *testing.T, dir string, on *sites, r Runner) *Manager {
	t.Helper()
	m, err := Open(Config{Store: filepath.Join(dir, "jobs-storage"), RunRoot: dir, Runner: r, Online: on.online,
		Interval: 10 * time.Millisecond, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func waitStatus(t *testing.T, m *Manager, id string, want string) Meta {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		j, err := m.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		if j.Status == want {
			return j
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s is %s, want %s (%s)", id, j.Status, want, j.Reason)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestJobRunsWhenSitesComeAndKeepsItsWorkspace(t *testing.T) {
	dir := t.TempDir()
	on := &sites{}
	on.set("site-1")
	got := make(chan *Run, 1)
	m := open(t, dir, on, RunnerFunc(func(ctx context.Context, r *Run) error {
		if _, err := os.Stat(filepath.Join(r.JobDir, "app", "config", "config_fed_server.json")); err != nil {
			return err
		}
		os.MkdirAll(filepath.Join(r.Dir, "app_server"), 0o700)
		os.WriteFile(filepath.Join(r.Dir, "app_server", "model.npy"), []byte("model"), 0o600)
		got <- r
		return nil
	}))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go m.Serve(ctx)
	j, err := m.Submit(helloJob(t, allMeta), Submitter{Name: "admin@nvidia.com", Org: "nvidia", Role: "project_admin"})
	if err != nil {
		t.Fatal(err)
	}
	if j.Status != Submitted || j.Name != "hello" || j.JobFolderName != "hello" || j.MinClients != 2 {
		t.Fatalf("meta %+v", j)
	}
	time.Sleep(50 * time.Millisecond)
	if s, _ := m.Get(j.JobID); s.Status != Submitted {
		t.Fatalf("with 1 of 2 sites the job is %s", s.Status)
	}
	on.set("site-1", "site-2")
	m.Wake()
	r := <-got
	if strings.Join(r.Sites, ",") != "site-1,site-2" {
		t.Fatalf("sites %v", r.Sites)
	}
	done := waitStatus(t, m, j.JobID, Completed)
	if done.Duration == "" || done.StartTime == "" {
		t.Fatalf("no start time or duration: %+v", done)
	}
	ws, err := m.Workspace(j.JobID)
	if err != nil || ws == nil {
		t.Fatalf("workspace: %v", err)
	}
	zr, err := zip.NewReader(bytes.NewReader(ws), int64(len(ws)))
	if err != nil || len(zr.File) != 1 || zr.File[0].Name != "app_server/model.npy" {
		t.Fatalf("workspace zip: %v %v", err, zr)
	}
	if _, err := os.Stat(r.JobDir); !os.IsNotExist(err) {
		t.Fatalf("the unpacked job is left at %s", r.JobDir)
	}
	// A new Manager on the same store sees the job.
	cancel()
	m2 := open(t, dir, on, RunnerFunc(func(context.Context, *Run) error { return nil }))
	if s, err := m2.Get(j.JobID); err != nil || s.Status != Completed {
		t.Fatalf("after reopening: %+v %v", s, err)
	}
	if err := m2.Delete(j.JobID); err != nil {
		t.Fatal(err)
	}
	if _, err := m2.Get(j.JobID); !errors.Is(err, ErrNoJob) {
		t.Fatalf("deleted job: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, j.JobID)); !os.IsNotExist(err) {
		t.Fatal("the run folder is left after delete")
	}
}

func TestAbortRunningAndWaitingJobs(t *testing.T) {
	dir := t.TempDir()
	on := &sites{}
	on.set("site-1")
	started := make(chan struct{}, 1)
	m := open(t, dir, on, RunnerFunc(func(ctx context.Context, r *Run) error {
		started <- struct{}{}
		<-ctx.Done()
		return ctx.Err()
	}))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go m.Serve(ctx)
	one := `{"name": "hello", "deploy_map": {"app": ["@ALL"]}}`
	a, err := m.Submit(helloJob(t, one), Submitter{Name: "admin"})
	if err != nil {
		t.Fatal(err)
	}
	<-started
	b, err := m.Submit(helloJob(t, one), Submitter{Name: "admin"})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(30 * time.Millisecond)
	if s, _ := m.Get(b.JobID); s.Status != Submitted {
		t.Fatalf("a second job runs beside the first: %s", s.Status)
	}
	if err := m.Delete(a.JobID); err == nil {
		t.Fatal("a running job was deleted")
	}
	if err := m.Abort(a.JobID); err != nil {
		t.Fatal(err)
	}
	if s, _ := m.Get(a.JobID); s.Status != Aborted || s.Reason != ErrAborted.Error() {
		t.Fatalf("aborted job: %+v", s)
	}
	<-started // b starts once a ended
	if err := m.Abort(b.JobID); err != nil {
		t.Fatal(err)
	}
	if err := m.Abort(b.JobID); err == nil {
		t.Fatal("a finished job was aborted again")
	}
}

func TestRunningJobAtRestartIsReportedAbnormal(t *testing.T) {
	dir := t.TempDir()
	on := &sites{}
	on.set("site-1")
	started := make(chan string, 1)
	m := open(t, dir, on, RunnerFunc(func(ctx context.Context, r *Run) error {
		os.WriteFile(filepath.Join(r.Dir, "round-1.npy"), []byte("global"), 0o600)
		started <- r.Meta.JobID
		select {} // the server dies here: nothing records the end
	}))
	go m.Serve(context.Background())
	if _, err := m.Submit(helloJob(t, `{"deploy_map": {"app": ["@ALL"]}}`), Submitter{Name: "admin"}); err != nil {
		t.Fatal(err)
	}
	id := <-started
	m2 := open(t, dir, on, RunnerFunc(func(context.Context, *Run) error { return nil }))
	j, err := m2.Get(id)
	if err != nil || j.Status != Abnormal || !strings.Contains(j.Reason, "stopped while the job ran") {
		t.Fatalf("after the restart: %+v %v", j, err)
	}
	ws, err := m2.Workspace(id)
	if err != nil || !bytes.Contains(ws, []byte("round-1.npy")) {
		t.Fatalf("the workspace of the cut-off job was not kept: %v", err)
	}
}

func TestJobGivenUpWhenSitesNeverCome(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	var mu sync.Mutex
	m, err := Open(Config{Store: filepath.Join(dir, "s"), RunRoot: dir, Online: func() []string { return nil },
		Runner: RunnerFunc(func(context.Context, *Run) error { return nil }), Interval: 5 * time.Millisecond,
		ScheduleTimeout: time.Minute, Now: func() time.Time { mu.Lock(); defer mu.Unlock(); return now }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go m.Serve(ctx)
	j, err := m.Submit(helloJob(t, `{"deploy_map": {"app": ["server", "site-9"]}}`), Submitter{Name: "admin"})
	if err != nil {
		t.Fatal(err)
	}
	// The clock moves a minute every few milliseconds: the wait counts
	// from when the scheduler first looked at the job.
	go func() {
		for ctx.Err() == nil {
			mu.Lock()
			now = now.Add(time.Minute)
			mu.Unlock()
			time.Sleep(5 * time.Millisecond)
		}
	}()
	got := waitStatus(t, m, j.JobID, CantSchedule)
	if !strings.Contains(got.Reason, "0 of the 1 site(s)") {
		t.Fatalf("reason %q", got.Reason)
	}
}

func TestSubmitRefusesBadJobs(t *testing.T) {
	m := open(t, t.TempDir(), &sites{}, RunnerFunc(func(context.Context, *Run) error { return nil }))
	cfg := `{"format_version": 2}`
	cases := map[string]struct {
		zip  []byte
		want string
	}{
		"not a zip":   {[]byte("PK\x03\x04 nonsense"), "not a zip"},
		"no meta":     {jobZip(t, map[string]string{"j/app/config/config_fed_server.json": cfg}), "no meta.json"},
		"two folders": {jobZip(t, map[string]string{"j/meta.json": allMeta, "k/app/config/x.json": cfg}), "two top folders"},
		"missing app": {jobZip(t, map[string]string{"j/meta.json": allMeta, "j/other/config/x.json": cfg}), "no app/config"},
		"no server":   {helloJob(t, `{"deploy_map": {"app": ["site-1"]}}`), "exactly one app"},
		"no sites":    {helloJob(t, `{"deploy_map": {"app": ["server"]}}`), "no app to any site"},
		"dict map":    {helloJob(t, `{"deploy_map": {"app": {"sites": ["@ALL"]}}}`), "list of site names"},
		"bad site":    {helloJob(t, `{"deploy_map": {"app": ["@ALL", "site\n1"]}}`), "site name"},
		"traversal":   {jobZip(t, map[string]string{"../meta.json": allMeta}), "job folder"},
		"app escape":  {helloJob(t, `{"deploy_map": {"../x": ["@ALL"]}}`), "app name"},
		"bad json":    {helloJob(t, `{"deploy_map": `), "meta.json"},
		"min clients": {helloJob(t, `{"min_clients": -1, "deploy_map": {"app": ["@ALL"]}}`), "out of range"},
		"inner path":  {jobZip(t, map[string]string{"j/meta.json": allMeta, "j/app/config/x.json": cfg, "j/app/../../x": "x"}), "job"},
	}
	for name, c := range cases {
		if _, err := m.Submit(c.zip, Submitter{Name: "admin"}); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error with %q", name, err, c.want)
		}
	}
	if n := len(m.List()); n != 0 {
		t.Fatalf("%d refused job(s) stored", n)
	}
}

func TestCandidates(t *testing.T) {
	m := &Meta{DeployMap: map[string][]string{"a": {"server", "site-1"}, "b": {"site-2"}}, Mandatory: []string{"site-1"}}
	if _, err := m.Candidates([]string{"site-2"}); err == nil || !strings.Contains(err.Error(), "mandatory") {
		t.Fatalf("mandatory: %v", err)
	}
	if s, err := m.Candidates([]string{"site-1", "site-2", "site-3"}); err != nil || strings.Join(s, ",") != "site-1,site-2" {
		t.Fatalf("named: %v %v", s, err)
	}
	m.MinClients = 1
	if s, err := m.Candidates([]string{"site-1"}); err != nil || len(s) != 1 {
		t.Fatalf("min 1: %v %v", s, err)
	}
	if m.ServerApp() != "a" || m.SiteApp("site-2") != "b" || m.SiteApp("site-3") != "" {
		t.Fatal("apps")
	}
}

func FuzzSubmit(f *testing.F) {
	f.Add(helloJob(f, allMeta))
	f.Add([]byte("PK"))
	dir := f.TempDir()
	m, err := Open(Config{Store: dir, Online: func() []string { return nil }, Runner: RunnerFunc(func(context.Context, *Run) error { return nil })})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if j, err := m.Submit(data, Submitter{Name: "fuzz"}); err == nil {
			m.Delete(j.JobID)
		}
	})
}
