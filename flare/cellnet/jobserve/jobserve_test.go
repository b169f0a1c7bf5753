package jobserve

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/cellnet/cell"
	"github.com/flarego/flarego/flare/cellnet/download"
	"github.com/flarego/flarego/flare/cellnet/jobcell"
	"github.com/flarego/flarego/flare/cellnet/stream"
	"github.com/flarego/flarego/flare/client"
	"github.com/flarego/flarego/flare/np"
	"github.com/flarego/flarego/flare/site"
	"github.com/flarego/flarego/persistor"
	"github.com/flarego/flarego/persistor/pickle"
)

// runtime is a server runtime in miniature: rounds of one train task
// each, the next round's model the last result; then the run ends.
type runtime struct {
	mu      sync.Mutex
	rounds  int
	model   *persistor.Tensor
	given   bool
	results []*flare.Shareable
	beats   int
}

func (r *runtime) Register(context.Context, flare.Registration) (string, error) { return "tok", nil }
func (r *runtime) Heartbeat(context.Context, string) error {
	r.mu.Lock()
	r.beats++
	r.mu.Unlock()
	return nil
}
func (r *runtime) Quit(context.Context, string) error { return nil }
func (r *runtime) GetTask(_ context.Context, tok string) (*flare.Task, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case len(r.results) == r.rounds:
		return &flare.Task{Name: flare.TaskEndRun, Data: flare.NewShareable()}, nil
	case r.given:
		return &flare.Task{Name: flare.TaskTryAgain, Data: flare.NewShareable()}, nil
	}
	r.given = true
	sh := flare.NewShareable()
	sh.SetHeader(flare.HeaderTaskID, "t")
	jar := &pickle.Dict{}
	jar.Set("contribution_round", int64(len(r.results)))
	sh.SetHeader(flare.HeaderCookieJar, jar)
	sh.DXO = &flare.DXO{Kind: flare.KindWeights, Data: []flare.NamedArray{{Name: np.Key, Array: r.model}}, Meta: &pickle.Dict{}}
	return &flare.Task{Name: "train", Data: sh}, nil
}
func (r *runtime) Submit(_ context.Context, tok string, result func() (*flare.Shareable, error)) (string, error) {
	sh, err := result()
	if err != nil {
		return "", err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.results = append(r.results, sh)
	r.model, r.given = sh.DXO.Get(np.Key), false
	return "", nil
}
func (r *runtime) Poll(context.Context, string) ([]*flare.AdminRequest, error) { return nil, nil }
func (r *runtime) Reply(context.Context, string, string, *flare.AdminReply) error {
	return nil
}
func (r *runtime) KnownToken(string) bool            { return true }
func (r *runtime) ResultModel() *persistor.StateDict { return nil }
func (r *runtime) Meta() flare.ServerMeta            { return flare.ServerMeta{} }

// Our site's job cell runs three rounds of NPTrainer against our server's
// job cell: the arrays go by reference both ways (each side pulls them
// from the other's download service), the cookie jar comes back, and
// __end_run__ ends the site's run.
func TestJobRunsAgainstOurSite(t *testing.T) {
	a, b := cell.Pipe()
	siteCell, srvCell := cell.New(a, "site-1.job1"), cell.New(b, "server.job1")
	defer siteCell.Close()
	siteSt, srvSt := stream.New(siteCell, stream.Limits{}), stream.New(srvCell, stream.Limits{})
	defer siteSt.Close()
	defer srvSt.Close()

	rt := &runtime{rounds: 3, model: persistor.FromFloat32([]float32{1, 2, 3}, 3)}
	svc := download.NewService("server.job1", download.Config{})
	defer svc.Close()
	j := &Job{ID: "job1", Handler: rt, Token: func(string) (string, bool) { return "tok", true }, Service: svc,
		Download: site.Downloader(srvSt), WaitTime: 0.05}
	j.Serve(srvSt)

	tr := jobcell.New(siteCell, siteSt, "site-1", "proj", "job1", "tok")
	tr.Options = site.Downloader(siteSt)
	siteSvc := download.NewService("site-1.job1", download.Config{})
	defer siteSvc.Close()
	site.Serve(siteSt, siteSvc)
	tr.EncodeResult = siteSvc.Encode
	ex, _ := np.New(nil)
	cl := &client.Client{Name: "site-1", Target: "server", Project: "proj", Tasks: map[string]flare.Executor{"train": ex},
		Wire: wire{tr}, Heartbeat: 20 * time.Millisecond, Logf: t.Logf}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := cl.Run(ctx); err != nil {
		t.Fatal(err)
	}
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if len(rt.results) != 3 {
		t.Fatalf("%d results", len(rt.results))
	}
	got, _ := rt.model.Float32s()
	if got[0] != 4 || got[2] != 6 {
		t.Fatalf("after 3 rounds: %v", got)
	}
	if jar := rt.results[2].CookieJar(); jar == nil {
		t.Fatal("the result does not echo the cookie jar")
	}
}

type wire struct{ t flare.ClientTransport }

func (w wire) Dial(string) (flare.ClientTransport, error) { return w.t, nil }
