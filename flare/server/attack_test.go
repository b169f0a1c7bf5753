package server

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/client"
	"github.com/flarego/flarego/flare/internal/flaretest"
	"github.com/flarego/flarego/flare/wire20"
	"github.com/flarego/flarego/persistor"
	"github.com/flarego/flarego/persistor/pickle"
	"github.com/flarego/flarego/proto/admin"
	"github.com/flarego/flarego/proto/fedlearn"
)

// newTestServer is a one-job server over p whose log is kept.
func newTestServer(t *testing.T, cfg *flare.ServerConfig, p *flaretest.MemPersistor) (*Server, *flaretest.Log) {
	t.Helper()
	srv, err := New(cfg, flaretest.Registry(p))
	if err != nil {
		t.Fatal(err)
	}
	log := &flaretest.Log{T: t}
	srv.Logf = log.Logf
	return srv, log
}

// Names are checked: too long, empty, or holding a newline (which forged
// log lines) are refused with InvalidArgument and not logged raw.
func TestRegisterRefusesBadNames(t *testing.T) {
	srv, log := newTestServer(t, flaretest.ServerConfig(1, 1, 0), &flaretest.MemPersistor{Init: flaretest.InitModel()})
	addr, _ := serveOn(t, srv)
	defer srv.Stop()
	conn, _ := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	defer conn.Close()
	fl := fedlearn.NewFederatedTrainingClient(conn)
	for _, req := range []*fedlearn.ClientLogin{
		{ClientName: ""},
		{ClientName: "site-1\n2026-01-01 server: round 1/1 done"},
		{ClientName: strings.Repeat("s", flare.MaxNameBytes+1)},
		{ClientName: "site\x1b[2J"},
		{ClientName: "site-1", Meta: &fedlearn.MetaData{Project: &fedlearn.MetaData_Project{Name: "p\nq"}}},
	} {
		_, err := fl.Register(context.Background(), req)
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("Register(%.40q): %v", req.ClientName, err)
		}
		if strings.ContainsAny(status.Convert(err).Message(), "\n\x1b") {
			t.Errorf("error holds the raw name: %q", err)
		}
	}
	if _, err := fl.Register(context.Background(), &fedlearn.ClientLogin{ClientName: "admin@nvidia.com"}); err != nil {
		t.Errorf("a provisioned name was refused: %v", err)
	}
	log.CheckLines(t, 300)
}

// The one-job server ends its run as NVFlare's does: a client that polls
// the admin channel is told to shut down only after it fetched __end_run__
// and its app reports stopped (NVFlare's client kills its training process
// on shutdown, and talks to it while it exits).
func TestEndRunFetchedBeforeShutdown(t *testing.T) {
	p := &flaretest.MemPersistor{Init: flaretest.InitModel()}
	srv, _ := newTestServer(t, flaretest.ServerConfig(1, 1, 0), p)
	addr, done := serveOn(t, srv)
	srv.EndGrace = 5 * time.Second
	defer srv.Stop()
	conn, _ := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	defer conn.Close()
	fl, ac := fedlearn.NewFederatedTrainingClient(conn), admin.NewAdminCommunicatingClient(conn)
	reg, err := fl.Register(context.Background(), &fedlearn.ClientLogin{ClientName: "site-1"})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var events []string
	ended := false // the training process fetched __end_run__
	note := func(e string) { mu.Lock(); events = append(events, e); mu.Unlock() }
	pollDone := make(chan struct{})
	go func() { // the parent process: polls the admin channel
		defer close(pollDone)
		asked := 0
		for {
			msgs, err := ac.Retrieve(context.Background(), &admin.Client{ClientName: reg.Token})
			if err != nil {
				return
			}
			for _, m := range msgs.GetMessage() {
				switch m.Topic {
				case flare.TopicShutdown:
					note(m.Topic)
					return
				case flare.TopicCheckStatus:
					// The worker takes two more questions to exit after __end_run__.
					mu.Lock()
					status := "started"
					if ended {
						if asked++; asked > 2 {
							status = "stopped"
						}
					}
					mu.Unlock()
					if status == "stopped" {
						note(status)
					}
					body, _ := json.Marshal(map[string]string{"app_name": "app", "run_number": "1", "status": status})
					ac.SendReply(context.Background(), &admin.Reply{ClientName: reg.Token, Message: &admin.Message{Id: flare.NewUUID(),
						Topic: "reply_" + m.Topic, BodyType: "str", Body: body, Headers: map[string]string{"_refMsgId": m.Id}}})
				default:
					note(m.Topic)
				}
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	// The training process: one task, then a pause before the next GetTask.
	state := &fedlearn.ClientState{Token: reg.Token}
	var task *fedlearn.CurrentTask
	for task == nil || task.TaskName == flare.TaskTryAgain {
		if task, err = fl.GetTask(context.Background(), state); err != nil {
			t.Fatal(err)
		}
	}
	in, err := wire20.DecodeShareable(task.Data.Params["data"].Ndarray)
	if err != nil {
		t.Fatal(err)
	}
	res, _ := flaretest.AddExecutor{Delta: 1, Steps: 1}.Execute(context.Background(), task.TaskName, in, &flare.FLContext{})
	res.SetHeader(flare.HeaderCookieJar, in.CookieJar())
	data, _ := wire20.EncodeShareable(res)
	if _, err := fl.SubmitUpdate(context.Background(), &fedlearn.Contribution{Client: state,
		Data: &fedlearn.ModelData{Params: map[string]*fedlearn.NDArray{"data": {Ndarray: data}}}}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond) // NVFlare's client asks again after a while
	note("GetTask")
	end, err := fl.GetTask(context.Background(), state)
	if err != nil || end.TaskName != flare.TaskEndRun {
		t.Fatalf("after the last round: %v %v", end.GetTaskName(), err)
	}
	mu.Lock()
	ended = true
	mu.Unlock()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	<-pollDone
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(events, " ") != "GetTask stopped "+flare.TopicShutdown {
		t.Fatalf("events %v: shutdown must follow __end_run__ and the app's stop", events)
	}
}

// A failed result's reason (task_error) reaches the server's log, bounded
// and escaped, naming the site and the task; the round's error counts
// rounds from 1, as progress does.
func TestFailedResultReasonLogged(t *testing.T) {
	srv, log := newTestServer(t, flaretest.ServerConfig(1, 1, 0), &flaretest.MemPersistor{Init: flaretest.InitModel()})
	addr, done := serveOn(t, srv)
	defer srv.Stop()
	conn, _ := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	defer conn.Close()
	fl := fedlearn.NewFederatedTrainingClient(conn)
	reg, _ := fl.Register(context.Background(), &fedlearn.ClientLogin{ClientName: "site-3"})
	state := &fedlearn.ClientState{Token: reg.Token}
	var task *fedlearn.CurrentTask
	var err error
	for task == nil || task.TaskName == flare.TaskTryAgain {
		if task, err = fl.GetTask(context.Background(), state); err != nil {
			t.Fatal(err)
		}
	}
	in, _ := wire20.DecodeShareable(task.Data.Params["data"].Ndarray)
	res := flare.NewShareable()
	res.SetHeader(flare.HeaderRC, flare.RCExecutionException)
	res.SetHeader(flare.HeaderCookieJar, in.CookieJar())
	res.SetHeader(flare.HeaderTaskError, "no images under /nowhere\nforged line "+strings.Repeat("x", 5000))
	data, _ := wire20.EncodeShareable(res)
	if _, err := fl.SubmitUpdate(context.Background(), &fedlearn.Contribution{Client: state,
		Data: &fedlearn.ModelData{Params: map[string]*fedlearn.NDArray{"data": {Ndarray: data}}}}); err != nil {
		t.Fatal(err)
	}
	err = <-done
	if err == nil || !strings.Contains(err.Error(), "round 1/1") {
		t.Fatalf("server: %v, want the round counted from 1", err)
	}
	found := false
	for _, line := range log.Lines() {
		if strings.Contains(line, "client site-3: task train (round 1/1) failed with EXECUTION_EXCEPTION: no images under /nowhere\\nforged line") {
			found = true
		}
	}
	if !found {
		t.Errorf("no log line with the reason: %q", log.Lines())
	}
	log.CheckLines(t, 400)
}

// rawSite is a client speaking the wire by hand, to send crafted results.
type rawSite struct {
	fl    fedlearn.FederatedTrainingClient
	state *fedlearn.ClientState
}

func newRawSite(t *testing.T, addr, name string) *rawSite {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fl := fedlearn.NewFederatedTrainingClient(conn)
	reg, err := fl.Register(context.Background(), &fedlearn.ClientLogin{ClientName: name})
	if err != nil {
		t.Fatal(err)
	}
	return &rawSite{fl: fl, state: &fedlearn.ClientState{ClientName: name, Token: reg.Token}}
}

// task waits for the round's task.
func (r *rawSite) task(t *testing.T) *flare.Shareable {
	t.Helper()
	for {
		task, err := r.fl.GetTask(context.Background(), r.state)
		if err != nil {
			t.Fatal(err)
		}
		if task.TaskName != flare.TaskTryAgain {
			in, err := wire20.DecodeShareable(task.Data.Params["data"].Ndarray)
			if err != nil {
				t.Fatal(err)
			}
			return in
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// submit sends res as the result of task in.
func (r *rawSite) submit(t *testing.T, in, res *flare.Shareable) error {
	t.Helper()
	res.SetHeader(flare.HeaderCookieJar, in.CookieJar())
	res.SetHeader(flare.HeaderTaskName, "train")
	data, err := wire20.EncodeShareable(res)
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.fl.SubmitUpdate(context.Background(), &fedlearn.Contribution{Client: r.state,
		Data: &fedlearn.ModelData{Params: map[string]*fedlearn.NDArray{"data": {Ndarray: data}}}})
	return err
}

// weightsResult is a WEIGHTS result of sd with NUM_STEPS_CURRENT_ROUND
// steps (none when steps is nil).
func weightsResult(sd *persistor.StateDict, steps any) *flare.Shareable {
	meta := &pickle.Dict{}
	if steps != nil {
		meta.Set(flare.MetaNumStepsCurrentRound, steps)
	}
	res := flare.NewShareable()
	res.DXO = flare.WeightsDXO(sd, meta)
	return res
}

// modelWith is initModel with w replaced.
func modelWith(w ...float32) *persistor.StateDict {
	sd := flaretest.InitModel()
	sd.Set("w", persistor.FromFloat32(w, 2, 2))
	return sd
}

// with sets name in sd and returns sd.
func with(sd *persistor.StateDict, name string, t *persistor.Tensor) *persistor.StateDict {
	sd.Set(name, t)
	return sd
}

// refusedThenGood runs one round in which evil sends bad and an honest site
// then sends w = 5 (steps 1): bad must be refused, with a log line naming
// the site, the task and the round and holding want; the round must
// complete on the honest result alone, and the run must report evil lost.
func refusedThenGood(t *testing.T, bad *flare.Shareable, want string) {
	t.Helper()
	p := &flaretest.MemPersistor{Init: flaretest.InitModel()}
	srv, log := newTestServer(t, flaretest.ServerConfig(1, 1, 5), p)
	addr, done := serveOn(t, srv)
	defer srv.Stop()
	evil, good := newRawSite(t, addr, "evil"), newRawSite(t, addr, "good")
	in := evil.task(t)
	err := evil.submit(t, in, bad)
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), want) {
		t.Fatalf("bad result: %v, want InvalidArgument with %q", err, want)
	}
	if err := good.submit(t, good.task(t), weightsResult(modelWith(5, 5, 5, 5), int64(1))); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if len(p.Saved) != 1 {
		t.Fatalf("%d models saved", len(p.Saved))
	}
	if w, _ := p.Saved[0].Get("w").Float32s(); fmt.Sprint(w) != "[5 5 5 5]" {
		t.Fatalf("w = %v: the refused result leaked in", w)
	}
	found := false
	for _, line := range log.Lines() {
		if strings.Contains(line, "client evil: task train (round 1/1): result refused: ") && strings.Contains(line, want) {
			found = true
		}
	}
	if !found {
		t.Errorf("no log line naming site, task, round and %q: %q", want, log.Lines())
	}
	log.CheckLines(t, 400)
	lost, sites := srv.LostSites()
	if len(lost) != 1 || sites != 2 || !strings.HasPrefix(lost[0], "evil: task train (round 1/1): result refused: ") {
		t.Errorf("lost sites %q of %d", lost, sites)
	}
}

// A result holding NaN or an infinity (or a value no float32 holds) is
// refused whole; the others carry the round.
func TestNonFiniteResultRefused(t *testing.T) {
	huge := with(flaretest.InitModel(), "bn.num_batches_tracked", persistor.FromFloat64([]float64{1e300}))
	for _, c := range []struct {
		name string
		sd   *persistor.StateDict
		want string
	}{
		{"NaN", modelWith(1, 2, float32(math.NaN()), 4), `array "w" element 2 is NaN`},
		{"+Inf", modelWith(float32(math.Inf(1)), 2, 3, 4), `array "w" element 0 is +Inf`},
		{"-Inf", modelWith(1, 2, 3, float32(math.Inf(-1))), `array "w" element 3 is -Inf`},
		{"1e300", huge, `array "bn.num_batches_tracked" element 0 is 1e+300`},
	} {
		t.Run(c.name, func(t *testing.T) { refusedThenGood(t, weightsResult(c.sd, int64(1)), c.want) })
	}
}

// NUM_STEPS_CURRENT_ROUND must be a whole number from 1 to 2^40: a
// negative, zero, NaN, infinite, fractional, huge or non-numeric weight is
// refused, a missing one weighs 1 (as NVFlare's aggregator has it).
func TestBadStepCountRefused(t *testing.T) {
	for _, steps := range []any{int64(-3), int64(0), math.NaN(), math.Inf(1), math.Inf(-1), 2.5, 1e30, int64(1) << 41,
		new(big.Int).Lsh(big.NewInt(1), 100), "ten", true} {
		_, _, err := resultWeight(weightsResult(flaretest.InitModel(), steps).DXO)
		if err == nil || !strings.Contains(err.Error(), flare.MetaNumStepsCurrentRound) {
			t.Errorf("steps %v (%T): %v", steps, steps, err)
		}
	}
	for steps, want := range map[any]float64{int64(7): 7, 3.0: 3, int64(1) << 40: 1 << 40} {
		if w, _, err := resultWeight(weightsResult(flaretest.InitModel(), steps).DXO); err != nil || w != want {
			t.Errorf("steps %v: %v %v", steps, w, err)
		}
	}
	if w, present, err := resultWeight(weightsResult(flaretest.InitModel(), nil).DXO); w != 1 || present || err != nil {
		t.Errorf("no steps: %v %v %v", w, present, err)
	}
	t.Run("server", func(t *testing.T) {
		refusedThenGood(t, weightsResult(modelWith(100, 100, 100, 100), int64(-1000)), "NUM_STEPS_CURRENT_ROUND is -1000")
	})
	t.Run("NaN", func(t *testing.T) {
		refusedThenGood(t, weightsResult(modelWith(100, 100, 100, 100), math.NaN()), "NUM_STEPS_CURRENT_ROUND is NaN")
	})
}

// A result's arrays must be the model's: the same names, each once, the
// same shapes, a dtype of the same kind.
func TestMismatchedResultRefused(t *testing.T) {
	acc, _ := newAccumulator(flaretest.InitModel())
	w := persistor.FromFloat32([]float32{1, 2, 3, 4}, 2, 2)
	nb := persistor.FromInt64([]int64{3})
	for _, c := range []struct {
		name string
		data []flare.NamedArray
		want string
	}{
		{"missing", []flare.NamedArray{{Name: "w", Array: w}}, "result has 1 arrays, the model 2"},
		{"extra", []flare.NamedArray{{Name: "w", Array: w}, {Name: "bn.num_batches_tracked", Array: nb}, {Name: "x", Array: w}}, "result has 3 arrays, the model 2"},
		{"unknown", []flare.NamedArray{{Name: "w", Array: w}, {Name: "x", Array: nb}}, `unknown array "x"`},
		{"twice", []flare.NamedArray{{Name: "w", Array: w}, {Name: "w", Array: w}}, `array "w" twice`},
		{"shape", []flare.NamedArray{{Name: "w", Array: persistor.FromFloat32([]float32{1, 2, 3, 4}, 4)}, {Name: "bn.num_batches_tracked", Array: nb}}, `"w" has shape [4], the model [2 2]`},
		{"rank", []flare.NamedArray{{Name: "w", Array: persistor.FromFloat32([]float32{1, 2, 3, 4}, 2, 2, 1)}, {Name: "bn.num_batches_tracked", Array: nb}}, `"w" has shape [2 2 1]`},
		{"dtype", []flare.NamedArray{{Name: "w", Array: persistor.FromInt64([]int64{1, 2, 3, 4}, 2, 2)}, {Name: "bn.num_batches_tracked", Array: nb}}, `"w" is int64, the model's float32`},
		{"bool", []flare.NamedArray{{Name: "w", Array: w}, {Name: "bn.num_batches_tracked", Array: &persistor.Tensor{DType: persistor.Bool, Data: []byte{1}}}}, `is bool`},
		{"short", []flare.NamedArray{{Name: "w", Array: &persistor.Tensor{DType: persistor.Float32, Shape: []int{2, 2}, Data: make([]byte, 8)}}, {Name: "bn.num_batches_tracked", Array: nb}}, "has 8 bytes"},
		{"nil", []flare.NamedArray{{Name: "w", Array: nil}, {Name: "bn.num_batches_tracked", Array: nb}}, `"w" is empty`},
	} {
		err := acc.add(&flare.DXO{Kind: flare.KindWeights, Data: c.data}, 1)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
	if acc.total != 0 || acc.sums["w"][0] != 0 {
		t.Fatal("a refused result changed the sums")
	}
	// A model's float64 buffer (num_batches_tracked after one aggregation)
	// comes back as a client's int64, and float32 weights as float64.
	acc, _ = newAccumulator(with(modelWith(1, 2, 3, 4), "bn.num_batches_tracked", persistor.FromFloat64([]float64{2})))
	if err := acc.add(&flare.DXO{Kind: flare.KindWeights, Data: []flare.NamedArray{{Name: "w", Array: persistor.FromFloat64([]float64{1, 2, 3, 4}, 2, 2)}, {Name: "bn.num_batches_tracked", Array: nb}}}, 1); err != nil {
		t.Fatal(err)
	}
}

// A mean that is not finite is an error, never a global model (the bounds
// on results keep it from happening; this is the last line).
func TestNonFiniteMeanNotSaved(t *testing.T) {
	acc, _ := newAccumulator(flaretest.InitModel())
	acc.total = 1
	acc.sums["w"][1] = math.Inf(1)
	if _, err := acc.result(); err == nil || !strings.Contains(err.Error(), `"w" element 1 is +Inf`) {
		t.Fatalf("non-finite mean: %v", err)
	}
	acc.sums["w"][1] = 1e300 // finite in float64, not in float32
	if _, err := acc.result(); err == nil || !strings.Contains(err.Error(), `"w" element 1 is +Inf`) {
		t.Fatalf("mean beyond float32: %v", err)
	}
}

// A site that fails its task while another carries the round is reported
// lost, with the reason it gave; the round itself completes.
func TestLostSiteReported(t *testing.T) {
	p := &flaretest.MemPersistor{Init: flaretest.InitModel()}
	srv, log := newTestServer(t, flaretest.ServerConfig(1, 1, 5), p)
	addr, done := serveOn(t, srv)
	defer srv.Stop()
	bad, good := newRawSite(t, addr, "site-3"), newRawSite(t, addr, "site-1")
	failed := flare.NewShareable()
	failed.SetHeader(flare.HeaderRC, flare.RCExecutionException)
	failed.SetHeader(flare.HeaderTaskError, "no image could be read")
	if err := bad.submit(t, bad.task(t), failed); err != nil {
		t.Fatal(err)
	}
	if err := good.submit(t, good.task(t), weightsResult(modelWith(5, 5, 5, 5), int64(1))); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	lost, sites := srv.LostSites()
	want := "site-3: task train (round 1/1) failed with EXECUTION_EXCEPTION: no image could be read"
	if len(lost) != 1 || lost[0] != want || sites != 2 {
		t.Fatalf("lost %q of %d, want [%s] of 2", lost, sites, want)
	}
	found := false
	for _, line := range log.Lines() {
		found = found || strings.Contains(line, "run 1 lost 1 of 2 site(s): "+want)
	}
	if !found {
		t.Errorf("no summary line: %q", log.Lines())
	}
}

// FuzzAccumulate adds any decodable result to a round: whatever it holds,
// a result the accumulator takes leaves a finite mean, or none.
func FuzzAccumulate(f *testing.F) {
	for _, steps := range []any{int64(1), int64(-1), math.NaN(), 2.5, 1e30, nil} {
		b, _ := wire20.EncodeShareable(weightsResult(flaretest.InitModel(), steps))
		f.Add(b)
	}
	for _, sd := range []*persistor.StateDict{modelWith(float32(math.NaN()), 0, 0, 0), modelWith(float32(math.Inf(-1)), 0, 0, 0),
		with(flaretest.InitModel(), "bn.num_batches_tracked", persistor.FromFloat64([]float64{math.MaxFloat64}))} {
		b, _ := wire20.EncodeShareable(weightsResult(sd, int64(1<<40)))
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		sh, err := wire20.DecodeShareable(data)
		if err != nil || sh.DXO == nil {
			return
		}
		w, _, err := resultWeight(sh.DXO)
		if err != nil {
			return
		}
		acc, _ := newAccumulator(flaretest.InitModel())
		for range 3 {
			if acc.add(sh.DXO, w) != nil {
				return
			}
		}
		sd, err := acc.result()
		if err != nil {
			t.Fatalf("accepted results give no mean: %v", err)
		}
		for _, n := range sd.Names() {
			for i := range sd.Get(n).NumElements() {
				if x := sd.Get(n).Float64At(i); math.IsNaN(x) || math.IsInf(x, 0) {
					t.Fatalf("%s[%d] = %v", n, i, x)
				}
			}
		}
	})
}

// A site scoring a model NaN (or sending a metric JSON cannot hold) loses
// its cell, not every site's cross_val_results.json; the run reports it.
func TestCrossSiteNonFiniteMetricRefused(t *testing.T) {
	cfg := flaretest.ServerConfig(2, 1, 0)
	cfg.Workflows = append(cfg.Workflows, flare.Component{ID: "cross_site_validate", Path: flare.PathCrossSiteModelEval,
		Args: json.RawMessage(`{"submit_model_timeout": 60, "validation_timeout": 60}`)})
	srv, log := newTestServer(t, cfg, &flaretest.MemPersistor{Init: flaretest.InitModel()})
	srv.OutputDir = t.TempDir()
	addr, done := serveOn(t, srv)
	site1 := &siteExec{add: flaretest.AddExecutor{Delta: 1, Steps: 1}}
	site2 := &siteExec{add: flaretest.AddExecutor{Delta: 4, Steps: 1}, offset: math.NaN()}
	runToEnd(t, done,
		&client.Client{Name: "site-1", Wire: wire20.Wire{}, Target: addr, Tasks: map[string]flare.Executor{"train": site1, "submit_model": site1, "validate": site1}},
		&client.Client{Name: "site-2", Wire: wire20.Wire{}, Target: addr, Tasks: map[string]flare.Executor{"train": site2, "submit_model": site2, "validate": site2}})
	b, err := os.ReadFile(filepath.Join(srv.OutputDir, "cross_site_val", "cross_val_results.json"))
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]map[string]map[string]float64
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != "map[site-1:map[site-1:map[val_acc:2] site-2:map[val_acc:5]] site-2:map[site-1:map[] site-2:map[]]]" {
		t.Fatalf("results %s", b)
	}
	lost, _ := srv.LostSites()
	if len(lost) != 1 || !strings.Contains(lost[0], `site-2: cross-site task validate (scoring the model of site-`) || !strings.Contains(lost[0], `metric "val_acc" is NaN`) {
		t.Fatalf("lost %q", lost)
	}
	log.CheckLines(t, 400)
}

// A site that takes the round's task and is then gone without a word
// (SIGKILL: no quit, no result, no __end_run__ fetched) is a site the run
// lost, once the end of the run has waited for it.
func TestVanishedSiteReported(t *testing.T) {
	p := &flaretest.MemPersistor{Init: flaretest.InitModel()}
	srv, _ := newTestServer(t, flaretest.ServerConfig(1, 1, 0), p)
	addr, done := serveOn(t, srv) // EndGrace 1 s
	defer srv.Stop()
	gone, good := newRawSite(t, addr, "site-2"), newRawSite(t, addr, "site-1")
	gone.task(t)
	if err := good.submit(t, good.task(t), weightsResult(modelWith(5, 5, 5, 5), int64(1))); err != nil {
		t.Fatal(err)
	}
	for { // site-1 ends the run as a client does
		task, err := good.fl.GetTask(context.Background(), good.state)
		if err != nil {
			t.Fatal(err)
		}
		if task.TaskName == flare.TaskEndRun {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	lost, sites := srv.LostSites()
	if len(lost) != 1 || !strings.HasPrefix(lost[0], "site-2: gone: no result for its last task and no __end_run__ fetched") || sites != 2 {
		t.Fatalf("lost %q of %d", lost, sites)
	}
}
