package jobs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/flarego/flarego/flare"
)

// A Runner runs a job: it returns when the job ends, nil when it
// completed. ctx is cancelled when the job is aborted or the server stops.
type Runner interface {
	Run(ctx context.Context, r *Run) error
}

// RunnerFunc is a function as a Runner.
type RunnerFunc func(ctx context.Context, r *Run) error

// Run runs the job r.
func (f RunnerFunc) Run(ctx context.Context, r *Run) error { return f(ctx, r) }

// Run is a job as its Runner gets it.
type Run struct {
	// Meta is the job's meta (a copy; the Runner may read it).
	Meta Meta
	// JobDir is the job folder as submitted, unpacked (its meta.json and
	// apps); it is removed after the run.
	JobDir string
	// Dir is the job's run folder (WORKSPACE/<job id>), empty at the
	// start: what the Runner leaves there is the job's workspace, zipped
	// into the store at the end for download.
	Dir string
	// Sites are the sites chosen for the job.
	Sites []string
}

// Submitter is who submits a job, from their login.
type Submitter struct {
	Name, Org, Role string
}

// Config configures a Manager.
type Config struct {
	// Store is the job store's folder (made if missing).
	Store string
	// RunRoot is where jobs' run folders go (the server's workspace).
	RunRoot string
	Runner  Runner
	// Online lists the sites online now.
	Online func() []string
	// MaxRunning bounds the jobs that run at once (default 1).
	MaxRunning int
	// ScheduleTimeout is how long a job waits for its sites before it is
	// given up as FINISHED:CAN_NOT_SCHEDULE (default 10 minutes).
	ScheduleTimeout time.Duration
	// Interval is how often the scheduler looks at the waiting jobs
	// (default 1 s; Wake makes it look at once).
	Interval time.Duration
	Logf     func(format string, args ...any)
	// Now is the clock (tests).
	Now func() time.Time
}

// A Manager keeps the job store and runs its jobs.
type Manager struct {
	cfg  Config
	st   store
	wake chan struct{}
	mu   sync.Mutex
	jobs map[string]*Meta // every job's meta, as on disk
	runs map[string]*running
	// waiting: a waiting job's id → when the scheduler first found it
	// could not start yet.
	waiting map[string]time.Time
	ctx     context.Context
	wg      sync.WaitGroup
	ready   chan struct{}
}

type running struct {
	cancel context.CancelCauseFunc
	done   chan struct{}
}

// ErrAborted is the cause of an aborted job's context.
var ErrAborted = errors.New("aborted by the admin")

// errShutdown is the cause when the server stops.
var errShutdown = errors.New("the server shut down while the job ran")

// Open opens the job store: a job it holds as running or dispatched was
// cut off when the server stopped, and is marked FINISHED:ABNORMAL, with
// whatever its run folder holds kept as its workspace.
func Open(cfg Config) (*Manager, error) {
	if cfg.Runner == nil || cfg.Online == nil {
		return nil, errors.New("jobs: a Manager needs a Runner and Online")
	}
	if cfg.MaxRunning <= 0 {
		cfg.MaxRunning = 1
	}
	if cfg.ScheduleTimeout <= 0 {
		cfg.ScheduleTimeout = 10 * time.Minute
	}
	if cfg.Interval <= 0 {
		cfg.Interval = time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	m := &Manager{cfg: cfg, st: store{dir: cfg.Store}, wake: make(chan struct{}, 1), jobs: map[string]*Meta{},
		runs: map[string]*running{}, waiting: map[string]time.Time{}, ready: make(chan struct{})}
	if err := os.MkdirAll(cfg.Store, 0o700); err != nil {
		return nil, fmt.Errorf("job store: %w", err)
	}
	metas, bad := m.st.list()
	for _, err := range bad {
		m.logf("job store %s: skipped: %v", cfg.Store, err)
	}
	for _, j := range metas {
		if j.Status == Running || j.Status == Dispatched {
			j.Status = Abnormal
			j.Reason = "the server stopped while the job ran; its workspace (with the last global model it saved) is kept"
			m.saveRunDir(j)
			if err := m.st.writeMeta(j); err != nil {
				return nil, err
			}
			m.logf("job %s (%s) was running when the server stopped: %s", j.JobID, j.Name, j.Status)
		}
		m.jobs[j.JobID] = j
	}
	return m, nil
}

func (m *Manager) logf(format string, args ...any) {
	if m.cfg.Logf != nil {
		m.cfg.Logf(format, args...)
	}
}

// Wake makes the scheduler look at the waiting jobs now (a site came).
func (m *Manager) Wake() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// Serve schedules and runs jobs until ctx ends; the jobs still running
// then are stopped, and reported FINISHED:ABORTED.
func (m *Manager) Serve(ctx context.Context) error {
	m.mu.Lock()
	m.ctx = ctx
	m.mu.Unlock()
	close(m.ready)
	t := time.NewTicker(m.cfg.Interval)
	defer t.Stop()
	for {
		m.schedule()
		select {
		case <-ctx.Done():
			m.mu.Lock()
			for _, r := range m.runs {
				r.cancel(errShutdown)
			}
			m.mu.Unlock()
			m.wg.Wait()
			return nil
		case <-t.C:
		case <-m.wake:
		}
	}
}

// Submit checks and stores a job, SUBMITTED; it returns its meta.
func (m *Manager) Submit(data []byte, who Submitter) (*Meta, error) {
	j, err := checkJob(data)
	if err != nil {
		return nil, err
	}
	now := m.cfg.Now()
	j.JobID = flare.NewUUID()
	j.SubmitterName, j.SubmitterOrg, j.SubmitterRole = who.Name, who.Org, who.Role
	j.Status = Submitted
	j.Study = "default"
	j.SubmitTime = float64(now.UnixNano()) / 1e9
	j.SubmitTimeISO = isoTime(now)
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.st.add(j, data); err != nil {
		return nil, fmt.Errorf("job store: %w", err)
	}
	m.jobs[j.JobID] = j
	m.logf("job %s (%s) submitted by %s", j.JobID, j.Name, flare.LogSafe(who.Name))
	m.Wake()
	c := *j
	return &c, nil
}

// List is every job's meta, oldest first.
func (m *Manager) List() []Meta {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Meta, 0, len(m.jobs))
	for _, j := range m.jobs {
		out = append(out, *j)
	}
	sort.SliceStable(out, func(a, b int) bool { return out[a].SubmitTime < out[b].SubmitTime })
	return out
}

// Get is a job's meta.
func (m *Manager) Get(id string) (Meta, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	j, ok := m.jobs[id]
	if !ok {
		return Meta{}, fmt.Errorf("job %s: %w", flare.LogCut(id), ErrNoJob)
	}
	return *j, nil
}

// Abort stops a running job, or gives up a waiting one; it returns once
// the job has ended. A finished job cannot be aborted.
func (m *Manager) Abort(id string) error {
	m.mu.Lock()
	j, ok := m.jobs[id]
	if !ok {
		m.mu.Unlock()
		return fmt.Errorf("job %s: %w", flare.LogCut(id), ErrNoJob)
	}
	if r, ok := m.runs[id]; ok {
		m.mu.Unlock()
		r.cancel(ErrAborted)
		<-r.done
		return nil
	}
	defer m.mu.Unlock()
	if Finished(j.Status) {
		return fmt.Errorf("job %s is %s already", id, j.Status)
	}
	return m.setStatus(j, Aborted, ErrAborted.Error())
}

// Delete removes a job that is not running, with its workspace.
func (m *Manager) Delete(id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	j, ok := m.jobs[id]
	if !ok {
		return fmt.Errorf("job %s: %w", flare.LogCut(id), ErrNoJob)
	}
	if _, ok := m.runs[id]; ok || j.Status == Running || j.Status == Dispatched {
		return fmt.Errorf("job %s is running: abort it first", id)
	}
	if err := m.st.remove(id); err != nil {
		return err
	}
	if m.cfg.RunRoot != "" {
		os.RemoveAll(filepath.Join(m.cfg.RunRoot, id))
	}
	delete(m.jobs, id)
	m.logf("job %s (%s) deleted", id, j.Name)
	return nil
}

// JobZip is the job as submitted.
func (m *Manager) JobZip(id string) ([]byte, error) {
	if _, err := m.Get(id); err != nil {
		return nil, err
	}
	return m.st.jobZip(id)
}

// Workspace is the zip of a finished job's workspace, or nil if it has
// none (it never ran).
func (m *Manager) Workspace(id string) ([]byte, error) {
	j, err := m.Get(id)
	if err != nil {
		return nil, err
	}
	if !Finished(j.Status) {
		return nil, fmt.Errorf("job %s is %s: its workspace is there once it has finished", id, j.Status)
	}
	return m.st.workspaceZip(id)
}

// Running are the ids of the jobs running now.
func (m *Manager) Running() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	ids := make([]string, 0, len(m.runs))
	for id := range m.runs {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// setStatus records a job's new status; m.mu is held.
func (m *Manager) setStatus(j *Meta, status, reason string) error {
	j.Status, j.Reason = status, reason
	if err := m.st.writeMeta(j); err != nil {
		m.logf("job %s: recording status %s: %v", j.JobID, status, err)
		return err
	}
	return nil
}

// schedule starts the waiting jobs whose sites are online, oldest first,
// while fewer than MaxRunning run.
func (m *Manager) schedule() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ctx == nil || m.ctx.Err() != nil {
		return
	}
	var waiting []*Meta
	for _, j := range m.jobs {
		if j.Status == Submitted {
			waiting = append(waiting, j)
		}
	}
	sort.SliceStable(waiting, func(a, b int) bool { return waiting[a].SubmitTime < waiting[b].SubmitTime })
	now := m.cfg.Now()
	var online []string
	if len(waiting) > 0 && len(m.runs) < m.cfg.MaxRunning {
		online = m.cfg.Online()
	}
	for _, j := range waiting {
		if len(m.runs) >= m.cfg.MaxRunning {
			return
		}
		sites, err := j.Candidates(online)
		if err != nil {
			// The wait counts from when this server first looked at the
			// job (not from its submission: after a restart the sites
			// need a moment to come back).
			first, ok := m.waiting[j.JobID]
			if !ok {
				first = now
				m.waiting[j.JobID] = now
			}
			if waited := now.Sub(first); waited > m.cfg.ScheduleTimeout {
				m.setStatus(j, CantSchedule, fmt.Sprintf("not started in %v: %v", m.cfg.ScheduleTimeout, err))
				m.logf("job %s (%s): %s: %s", j.JobID, j.Name, j.Status, j.Reason)
			}
			continue
		}
		delete(m.waiting, j.JobID)
		m.start(j, sites)
	}
}

// start runs a job; m.mu is held.
func (m *Manager) start(j *Meta, sites []string) {
	j.ScheduleCount++
	j.StartTime = m.cfg.Now().Format("2006-01-02 15:04:05.000000")
	j.Clients = sites
	j.DeployDetail = nil
	for _, s := range sites {
		j.DeployDetail = append(j.DeployDetail, s+": OK")
	}
	if err := m.setStatus(j, Dispatched, ""); err != nil {
		return
	}
	ctx, cancel := context.WithCancelCause(m.ctx)
	r := &running{cancel: cancel, done: make(chan struct{})}
	m.runs[j.JobID] = r
	m.wg.Add(1)
	run := &Run{Meta: *j, Sites: sites}
	m.logf("job %s (%s) started on %d site(s): %v", j.JobID, j.Name, len(sites), sites)
	go func() {
		defer m.wg.Done()
		defer close(r.done)
		err := m.run(ctx, j.JobID, run)
		cause := context.Cause(ctx)
		cancel(nil)
		m.finish(j.JobID, err, cause)
	}()
}

// run unpacks the job and runs it.
func (m *Manager) run(ctx context.Context, id string, run *Run) error {
	data, err := m.st.jobZip(id)
	if err != nil {
		return err
	}
	stage, err := os.MkdirTemp(m.cfg.Store, ".run-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stage)
	if err := flare.UnzipApp(data, filepath.Join(stage, "job")); err != nil {
		return err
	}
	run.JobDir = filepath.Join(stage, "job", run.Meta.JobFolderName)
	run.Dir = filepath.Join(m.cfg.RunRoot, id)
	os.RemoveAll(run.Dir)
	if err := os.MkdirAll(run.Dir, 0o700); err != nil {
		return err
	}
	m.mu.Lock()
	if j := m.jobs[id]; j != nil {
		m.setStatus(j, Running, "")
		run.Meta = *j
	}
	m.mu.Unlock()
	return m.cfg.Runner.Run(ctx, run)
}

// finish records how a job ended and keeps its workspace (zipped before
// the lock is taken: the store's other calls do not wait for it).
func (m *Manager) finish(id string, err, cause error) {
	m.mu.Lock()
	j := m.jobs[id]
	var snapshot Meta
	if j != nil {
		snapshot = *j
	}
	m.mu.Unlock()
	if j != nil {
		m.saveRunDir(&snapshot)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.runs, id)
	if j = m.jobs[id]; j == nil {
		return
	}
	start, perr := time.ParseInLocation("2006-01-02 15:04:05.000000", j.StartTime, time.Local)
	if perr == nil {
		j.Duration = DurationString(m.cfg.Now().Sub(start))
	}
	status, reason := Completed, ""
	switch {
	case errors.Is(cause, ErrAborted):
		status, reason = Aborted, ErrAborted.Error()
	case errors.Is(cause, errShutdown):
		status, reason = Aborted, errShutdown.Error()
	case err != nil:
		status, reason = ExecutionException, err.Error()
	}
	m.setStatus(j, status, reason)
	if reason != "" {
		m.logf("job %s (%s): %s: %s", id, j.Name, status, flare.LogSafe(reason))
	} else {
		m.logf("job %s (%s): %s in %s", id, j.Name, status, j.Duration)
	}
	m.Wake()
}

// saveRunDir zips a job's run folder into the store, if it has one.
func (m *Manager) saveRunDir(j *Meta) {
	if m.cfg.RunRoot == "" {
		return
	}
	dir := filepath.Join(m.cfg.RunRoot, j.JobID)
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return
	}
	if err := m.st.saveWorkspace(j.JobID, dir); err != nil {
		m.logf("job %s: keeping its workspace: %v", j.JobID, err)
	}
}
