package register

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/flarego/flarego/flare/cellnet/cell"
	"github.com/flarego/flarego/flare/cellnet/fobs"
	"github.com/flarego/flarego/flare/cellnet/lobs"
	"github.com/flarego/flarego/flare/cellnet/msgpk"
	"github.com/flarego/flarego/flare/cellnet/sfm"
	"github.com/flarego/flarego/flare/internal/flaretest"
)

// capturedReport is the first report_job_failure request of the NVFlare
// main capture (a site that finished its job).
func capturedReport(t *testing.T) *sfm.Frame {
	t.Helper()
	for _, cf := range flaretest.CellnetFrames(t, "nvflare-main") {
		f, err := sfm.Decode(cf.Data)
		if err == nil && cf.ToServer && f.Type == sfm.TypeData && f.Headers.String(cell.HTopic) == "report_job_failure" {
			return f
		}
	}
	t.Fatal("nvflare-main: no report_job_failure request")
	return nil
}

func decodeDict(t *testing.T, b []byte) msgpk.Map {
	t.Helper()
	c, err := lobs.Decode(b, lobs.V27)
	if err != nil {
		t.Fatal(err)
	}
	v, err := fobs.Decode(c, fobs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	m, ok := v.(msgpk.Map)
	if !ok {
		t.Fatalf("payload is a %T, not a dict", v)
	}
	return m
}

// A finished job is reported as NVFlare main's client reports it: the
// same channel, topic and payload bytes, the site's auth headers; the
// server's ok reply ends the call.
func TestReportJobOutcome(t *testing.T) {
	golden := capturedReport(t)
	want := decodeDict(t, golden.Payload)
	jobID := want.String("job_id")
	if jobID == "" {
		t.Fatalf("captured payload %v has no job_id", want)
	}
	name := golden.Headers.String("client_name")
	a, b := cell.Pipe()
	site, srv := cell.New(a, name), cell.New(b, "server")
	defer site.Close()
	site.SetAuth(&cell.Auth{ClientName: name, SSID: "NA", Token: "tok", TokenSignature: "sig"})
	got := make(chan *cell.Message, 2)
	srv.Handle("task", "report_job_failure", func(m *cell.Message) *cell.Message { got <- m; return nil })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := ReportJobOutcome(ctx, site, jobID, JobFinished, ""); err != nil {
		t.Fatal(err)
	}
	m := <-got
	if !bytes.Equal(m.Payload, golden.Payload) {
		t.Errorf("payload %v, NVFlare main sends %v", decodeDict(t, m.Payload), want)
	}
	for _, k := range []string{cell.HChannel, cell.HDestination, cell.HOrigin, cell.HMsgType, "client_name", "ssid", "__token__", cell.HPayloadEncoding} {
		if m.String(k) == "" || (k != "__token__" && m.String(k) != golden.Headers.String(k)) {
			t.Errorf("header %s = %q, NVFlare main sends %q", k, m.String(k), golden.Headers.String(k))
		}
	}

	// A failure carries its code and reason.
	if err := ReportJobOutcome(ctx, site, jobID, JobException, "exception"); err != nil {
		t.Fatal(err)
	}
	d := decodeDict(t, (<-got).Payload)
	if code, _ := d.Get("code"); code != int64(JobException) || d.String("reason") != "exception" || d.String("job_id") != jobID {
		t.Errorf("failure report %v", d)
	}
}

// NVFlare 2.8.1 takes the report without answering: the call waits only
// until its context ends.
func TestReportJobOutcomeNoReply(t *testing.T) {
	a, b := cell.Pipe()
	site, srv := cell.New(a, "site-1"), cell.New(b, "server")
	defer site.Close()
	got := make(chan *cell.Message, 1)
	srv.HandleInline("task", "report_job_failure", func(m *cell.Message) { got <- m })
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := ReportJobOutcome(ctx, site, "job", JobFinished, "")
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
		t.Fatalf("no reply: %v after %s", err, time.Since(start))
	}
	if d := decodeDict(t, (<-got).Payload); d.String("job_id") != "job" {
		t.Errorf("report %v", d)
	}
}
