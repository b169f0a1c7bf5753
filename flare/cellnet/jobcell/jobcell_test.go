package jobcell

import (
	"bytes"
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/cellnet/cell"
	"github.com/flarego/flarego/flare/cellnet/fobs"
	"github.com/flarego/flarego/flare/cellnet/lobs"
	"github.com/flarego/flarego/flare/cellnet/msgpk"
	"github.com/flarego/flarego/flare/cellnet/stream"
	"github.com/flarego/flarego/persistor"
	"github.com/flarego/flarego/persistor/pickle"
)

// fakeJob is the server's job cell as NVFlare 2.8 answers a site's:
// sync, one train task with the arrays inside, task check, submit.
type fakeJob struct {
	t         *testing.T
	s         *stream.Streamer
	submitted chan *flare.Shareable
	gets      atomic.Int32
}

func decodeShareable(t *testing.T, b []byte) *flare.Shareable {
	t.Helper()
	c, err := lobs.Decode(b, lobs.V27)
	if err != nil {
		t.Fatal(err)
	}
	v, err := fobs.Decode(c, fobs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	sh, ok := v.(*flare.Shareable)
	if !ok {
		t.Fatalf("a %T", v)
	}
	return sh
}

func payload(t *testing.T, v any) *cell.Message {
	b, err := fobs.Encode(v)
	if err != nil {
		t.Error(err)
	}
	return &cell.Message{Payload: b}
}

func newFakeJob(t *testing.T, s *stream.Streamer) *fakeJob {
	f := &fakeJob{t: t, s: s, submitted: make(chan *flare.Shareable, 1)}
	ok := func() *cell.Message {
		sh := flare.NewShareable()
		sh.SetHeader(flare.HeaderRC, flare.RCOK)
		return payload(t, sh)
	}
	s.Handle(ChannelAux, TopicSync, func(req *cell.Message) *cell.Message {
		sh := decodeShareable(t, req.Payload)
		props, _ := sh.Header("__peer_props__")
		if d, _ := props.(*pickle.Dict); d == nil {
			t.Errorf("sync without __peer_props__: %v", sh.Headers)
		}
		return ok()
	})
	s.Handle(ChannelAux, TopicTaskCheck, func(req *cell.Message) *cell.Message { return ok() })
	s.Handle(ChannelCommand, TopicGetTask, func(req *cell.Message) *cell.Message {
		if req.String("project_name") != "proj" {
			t.Errorf("get_task headers %v", req.Headers)
		}
		sh := flare.NewShareable()
		if f.gets.Add(1) > 1 {
			sh.SetHeader(flare.HeaderTaskName, flare.TaskTryAgain)
			sh.SetHeader(flare.HeaderWaitTime, int64(1))
			return payload(t, sh)
		}
		sh.SetHeader(flare.HeaderTaskName, "train")
		sh.SetHeader(flare.HeaderTaskID, "task-1")
		jar := &pickle.Dict{}
		jar.Set("contribution_round", int64(0))
		sh.SetHeader(flare.HeaderCookieJar, jar)
		sh.DXO = &flare.DXO{Kind: flare.KindWeights, Data: []flare.NamedArray{{Name: "numpy_key", Array: persistor.FromFloat32([]float32{1, 2, 3}, 3)}}, Meta: &pickle.Dict{}}
		return payload(t, sh)
	})
	s.Handle(ChannelCommand, TopicSubmit, func(req *cell.Message) *cell.Message {
		f.submitted <- decodeShareable(t, req.Payload)
		return payload(t, "")
	})
	return f
}

// linked joins a site's job cell and the server's in memory, each with
// its streamer; the test's end closes them.
func linked(t *testing.T) (siteCell *cell.Cell, siteStream, serverStream *stream.Streamer) {
	a, b := cell.Pipe()
	siteCell, serverCell := cell.New(a, "site-1.job1"), cell.New(b, "server.job1")
	siteStream, serverStream = stream.New(siteCell, stream.Limits{}), stream.New(serverCell, stream.Limits{})
	t.Cleanup(func() { siteStream.Close(); serverStream.Close(); siteCell.Close() })
	return siteCell, siteStream, serverStream
}

func TestJobProtocol(t *testing.T) {
	siteCell, siteStream, serverStream := linked(t)
	fake := newFakeJob(t, serverStream)
	tr := New(siteCell, siteStream, "site-1", "proj", "job1", "tok")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s := flare.Session{Name: "site-1", Project: "proj"}
	if tok, err := tr.Register(ctx, s); err != nil || tok != "tok" {
		t.Fatalf("register: %q %v", tok, err)
	}
	if err := tr.Heartbeat(ctx, s); err != nil {
		t.Fatal(err)
	}
	task, err := tr.GetTask(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	if task.Name != "train" || task.Data.DXO == nil || task.Data.DXO.Get("numpy_key") == nil || task.Data.CookieJar() == nil {
		t.Fatalf("task %+v", task)
	}
	result := flare.NewShareable()
	result.SetHeader(flare.HeaderTaskID, "task-1")
	result.DXO = task.Data.DXO
	if err := tr.Submit(ctx, s, task, result); err != nil {
		t.Fatal(err)
	}
	got := <-fake.submitted
	if got.HeaderString(flare.HeaderTaskID) != "task-1" || got.DXO.Get("numpy_key") == nil {
		t.Fatalf("submitted %v", got.Headers)
	}
	if ctxv, _ := got.Header("__peer_ctx__"); ctxv == nil {
		t.Fatal("the result has no __peer_ctx__")
	}
	if task, err := tr.GetTask(ctx, s); err != nil || task.Name != flare.TaskTryAgain {
		t.Fatalf("second task: %+v %v", task, err)
	}
	// The server's __end_run__ (a post) ends the run at the next GetTask.
	end := flare.NewShareable()
	end.SetHeader("__topic__", TopicEndRun)
	b2, _ := fobs.Encode(end)
	if err := serverStream.Post(ctx, "site-1.job1", ChannelAux, TopicEndRun, msgpk.Map{}, b2, cell.EncodingFOBS); err != nil {
		t.Fatal(err)
	}
	for !tr.Ended() && ctx.Err() == nil {
		time.Sleep(5 * time.Millisecond)
	}
	if task, err := tr.GetTask(ctx, s); err != nil || task.Name != flare.TaskEndRun {
		t.Fatalf("after end run: %+v %v", task, err)
	}
}

// The server's __end_run__ ends a GetTask still waiting for its answer:
// the server's job has ended and will not answer it, and the run must not
// wait CallTimeout for it.
func TestEndRunEndsWaitingGetTask(t *testing.T) {
	siteCell, siteStream, serverStream := linked(t)
	asked, release := make(chan struct{}, 1), make(chan struct{})
	defer close(release)
	serverStream.Handle(ChannelCommand, TopicGetTask, func(*cell.Message) *cell.Message {
		asked <- struct{}{}
		<-release // never answered while the test runs
		return nil
	})
	tr := New(siteCell, siteStream, "site-1", "proj", "job1", "tok")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type result struct {
		task *flare.Task
		err  error
	}
	got := make(chan result, 1)
	go func() {
		task, err := tr.GetTask(ctx, flare.Session{Name: "site-1", Project: "proj"})
		got <- result{task, err}
	}()
	<-asked
	end := flare.NewShareable()
	end.SetHeader("__topic__", TopicEndRun)
	b, _ := fobs.Encode(end)
	start := time.Now()
	if err := serverStream.Post(ctx, "site-1.job1", ChannelAux, TopicEndRun, msgpk.Map{}, b, cell.EncodingFOBS); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-got:
		if r.err != nil || r.task.Name != flare.TaskEndRun {
			t.Fatalf("the waiting GetTask: %+v %v, want %s", r.task, r.err, flare.TaskEndRun)
		}
		t.Logf("the waiting GetTask ended %s after __end_run__", time.Since(start).Round(time.Millisecond))
	case <-time.After(5 * time.Second):
		t.Fatalf("a GetTask waiting for the server's answer did not end on __end_run__ (CallTimeout %s)", CallTimeout)
	}
}

// A server whose get_task replies are hostile FOBS: each reply is refused
// with an error naming what was wrong, and the cell goes on working.
func TestHostileTaskReplies(t *testing.T) {
	siteCell, siteStream, serverStream := linked(t)
	typed := func(typ string) []byte {
		m, _ := msgpk.Marshal(msgpk.Map{{Key: "__fobs_type__", Value: typ}, {Key: "__fobs_data__", Value: "id"},
			{Key: "__fobs_dc__", Value: "nvflare.fuel.utils.fobs.decomposer.DataClassDecomposer"}})
		return (&lobs.Container{Main: m}).Encode(lobs.V27)
	}
	deep := append(bytes.Repeat([]byte{0x91}, 50000), 0xc0) // 50 000 nested arrays
	replies := [][]byte{typed("os.system"), typed("builtins.eval"), (&lobs.Container{Main: deep}).Encode(lobs.V27), []byte("garbage")}
	var n atomic.Int32
	serverStream.Handle(ChannelCommand, TopicGetTask, func(*cell.Message) *cell.Message {
		i := int(n.Add(1)) - 1
		if i < len(replies) {
			return &cell.Message{Payload: replies[i]}
		}
		sh := flare.NewShareable()
		sh.SetHeader(flare.HeaderTaskName, flare.TaskTryAgain)
		return payload(t, sh)
	})
	tr := New(siteCell, siteStream, "site-1", "proj", "job1", "tok")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range replies {
		if _, err := tr.GetTask(ctx, flare.Session{}); err == nil {
			t.Fatalf("hostile reply %d accepted", i)
		} else {
			t.Logf("reply %d: %v", i, err)
		}
	}
	if task, err := tr.GetTask(ctx, flare.Session{}); err != nil || task.Name != flare.TaskTryAgain {
		t.Fatalf("after the hostile replies: %+v %v", task, err)
	}
}

// While NVFlare main's server job starts, its cell answers the sync with
// a cellnet service_unavailable: Unavailable, worth repeating, as a sync
// without an answer or with a Shareable not OK; then OK.
func TestRegisterRepeatsUntilTheServerJobRuns(t *testing.T) {
	siteCell, siteStream, serverStream := linked(t)
	var syncs atomic.Int32
	serverStream.Handle(ChannelAux, TopicSync, func(req *cell.Message) *cell.Message {
		sh := flare.NewShareable()
		switch syncs.Add(1) {
		case 1:
			return &cell.Message{Headers: msgpk.Map{{Key: cell.HReturnCode, Value: cell.RCServiceUnavailable}}}
		case 2:
			sh.SetHeader(flare.HeaderRC, "EXECUTION_EXCEPTION")
		default:
			sh.SetHeader(flare.HeaderRC, flare.RCOK)
		}
		return payload(t, sh)
	})
	tr := New(siteCell, siteStream, "site-1", "proj", "job1", "tok")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s := flare.Session{Name: "site-1", Project: "proj"}
	for i := 0; i < 2; i++ {
		if _, err := tr.Register(ctx, s); flare.CallKind(err) != flare.Unavailable {
			t.Fatalf("sync %d: %v (kind %v), want Unavailable", i+1, err, flare.CallKind(err))
		}
	}
	if tok, err := tr.Register(ctx, s); err != nil || tok != "tok" {
		t.Fatalf("sync 3: %q %v", tok, err)
	}
}
