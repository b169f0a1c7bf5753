package site

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/cellnet/cell"
	"github.com/flarego/flarego/flare/cellnet/fobs"
	"github.com/flarego/flarego/flare/cellnet/lobs"
	"github.com/flarego/flarego/flare/cellnet/msgpk"
	"github.com/flarego/flarego/flare/cellnet/register"
	"github.com/flarego/flarego/flare/cellnet/stream"
	"github.com/flarego/flarego/flare/internal/celltest"
)

// A job's outcome: finished, aborted (by the server or the site's
// stopping, whatever its run returned), failed.
func TestJobOutcome(t *testing.T) {
	for _, c := range []struct {
		j      job
		code   int
		reason string
	}{
		{job{}, register.JobFinished, ""},
		{job{err: errors.New("boom")}, register.JobException, "exception"},
		{job{aborted: true}, register.JobAborted, "aborted"},
		{job{aborted: true, err: errors.New("context canceled")}, register.JobAborted, "aborted"},
	} {
		if code, reason := c.j.outcome(); code != c.code || reason != c.reason {
			t.Errorf("%+v: outcome %d %q, want %d %q", c.j, code, reason, c.code, c.reason)
		}
	}
}

// A job whose run has returned is no longer aborted: the server's
// heartbeat answer naming it while its outcome is reported changes
// nothing.
func TestAbortEndedJob(t *testing.T) {
	s := &Site{Name: "site-1", jobs: map[string]*job{}}
	cancelled := 0
	s.jobs["a"] = &job{id: "a", cancel: func() { cancelled++ }}
	s.jobs["b"] = &job{id: "b", cancel: func() { cancelled++ }, ended: true}
	if !s.abortJob("a", "test") || !s.jobs["a"].aborted {
		t.Error("a running job was not aborted")
	}
	if s.abortJob("b", "test") || s.jobs["b"].aborted || s.abortJob("c", "test") {
		t.Error("an ended or unknown job was aborted")
	}
	if cancelled != 1 {
		t.Errorf("%d cancels, want 1", cancelled)
	}
}

// The outcome goes to the server on the parent cell; a server that does
// not answer (NVFlare 2.8.1) holds the site at most until it shuts down.
func TestReportOutcome(t *testing.T) {
	a, b := cell.Pipe()
	c, srv := cell.New(a, "site-1"), cell.New(b, "server")
	defer c.Close()
	got := make(chan msgpk.Map, 4)
	decode := func(m *cell.Message) {
		lc, err := lobs.Decode(m.Payload, lobs.V27)
		if err != nil {
			t.Error(err)
			return
		}
		v, err := fobs.Decode(lc, fobs.Options{})
		d, _ := v.(msgpk.Map)
		if err != nil || d == nil {
			t.Errorf("report payload %v %v", v, err)
		}
		got <- d
	}
	srv.Handle("task", "report_job_failure", func(m *cell.Message) *cell.Message { decode(m); return nil })
	s := &Site{Name: "site-1", cell: c, quit: make(chan struct{})}
	s.reportOutcome("job-1", register.JobAborted, "aborted")
	if d := <-got; d.String("job_id") != "job-1" || d.String("reason") != "aborted" {
		t.Errorf("report %v", d)
	}

	srv.HandleInline("task", "report_job_failure", decode)
	close(s.quit)
	start := time.Now()
	s.reportOutcome("job-2", register.JobFinished, "")
	if d := <-got; d.String("job_id") != "job-2" || time.Since(start) > reportTimeout/2 {
		t.Errorf("report %v after %s", d, time.Since(start))
	}

	s.cell = nil
	s.reportOutcome("job-3", register.JobFinished, "") // not connected: nothing to send on
}

// A job the server ends (__end_run__) is reported finished on the parent
// cell, and the heartbeats name it until then: NVFlare main fails a job
// whose site stops naming it without a report. The server's job gives one
// task and answers no get_task after it: its __end_run__ comes while the
// job cell waits for a task, and ends the run at once.
func TestSiteReportsJobOutcome(t *testing.T) {
	p := celltest.NewPKI(t)
	kit := writeKit(t, p)
	f := &fakeServer{t: t, pki: p, parents: make(chan *cell.Cell, 4), taskGiven: make(chan string, 64), quits: make(chan string, 4),
		jobStreams: make(chan *stream.Streamer, 4), holdTasks: make(chan struct{})}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	defer close(f.holdTasks)
	h := runSite(ctx, t, f, kit, 20*time.Millisecond)
	log, srv, done := h.log, h.srv, h.done
	h.startJob(t)
	st := <-f.jobStreams
	<-f.taskGiven
	waitEvent := func(what string, ok func(ev []string) bool) []string {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			if ev := f.eventLog(); ok(ev) {
				return ev
			} else if time.Now().After(deadline) {
				t.Fatalf("%s: %d events, the first %v, the last %v\n%s", what, len(ev), ev[:min(len(ev), 5)], ev[max(0, len(ev)-5):], strings.Join(log.Lines(), "\n"))
			}
		}
	}
	named := len(waitEvent("no heartbeat names the running job", func(ev []string) bool { return slices.Contains(ev, "heartbeat [job1]") })) - 1
	end := flare.NewShareable()
	end.SetHeader("__topic__", "__end_run__")
	b, _ := fobs.Encode(end)
	if err := st.Post(ctx, "site-1.job1", "aux_communication", "__end_run__", msgpk.Map{}, b, cell.EncodingFOBS); err != nil {
		t.Fatal(err)
	}
	ev := waitEvent("no report, then a heartbeat without the job", func(ev []string) bool {
		return slices.Contains(ev, "report job1 0") && ev[len(ev)-1] == "heartbeat []"
	})
	if report, dropped := slices.Index(ev, "report job1 0"), named+slices.Index(ev[named:], "heartbeat []"); dropped < report {
		t.Fatalf("a heartbeat stopped naming the job before its report: %v", ev)
	}
	waitLog(t, log, "job job1 finished", 1)
	if m := adminRequest(t, srv, "train.shutdown", nil, ""); m.Body != "Shutdown the client..." {
		t.Fatalf("shutdown: %+v", m)
	}
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
}
