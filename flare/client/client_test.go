package client

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	protobuf "google.golang.org/protobuf/proto"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/internal/flaretest"
	"github.com/flarego/flarego/flare/wire20"
	"github.com/flarego/flarego/persistor/pickle"
	"github.com/flarego/flarego/proto/admin"
	"github.com/flarego/flarego/proto/fedlearn"
)

// fakeServer plays an NVFlare 2.0 server from recorded replies: its
// first admin poll hands out adminMsgs, GetTask hands out tasks in order
// and then __end_run__, and, as NVFlare 2.0.5's server does, it ends the
// run of a client whose FLContext names another run than run.
type fakeServer struct {
	fedlearn.UnimplementedFederatedTrainingServer
	admin.UnimplementedAdminCommunicatingServer
	t         *testing.T
	run       int64
	adminMsgs []*admin.Message
	tasks     []*fedlearn.CurrentTask

	mu       sync.Mutex
	token    string
	polled   bool
	getTasks []int64 // the run number of each GetTask's FLContext
	submits  []*fedlearn.Contribution
	replies  []*admin.Reply
}

func (f *fakeServer) Register(ctx context.Context, req *fedlearn.ClientLogin) (*fedlearn.FederatedSummary, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.token = flare.NewUUID()
	return &fedlearn.FederatedSummary{Comment: "New client registered", Token: f.token}, nil
}

func (f *fakeServer) check(tok string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if tok != f.token {
		return status.Error(codes.Unauthenticated, "unknown token")
	}
	return nil
}

func (f *fakeServer) Heartbeat(ctx context.Context, req *fedlearn.Token) (*fedlearn.FederatedSummary, error) {
	return &fedlearn.FederatedSummary{}, f.check(req.Token)
}

func (f *fakeServer) GetTask(ctx context.Context, req *fedlearn.ClientState) (*fedlearn.CurrentTask, error) {
	if err := f.check(req.Token); err != nil {
		return nil, err
	}
	fl, err := wire20.DecodeFLContext(req.Context["fl_context"].GetNdarray())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	run, _ := fl.Get("__run_num__")
	f.mu.Lock()
	defer f.mu.Unlock()
	n, _ := run.(int64)
	f.getTasks = append(f.getTasks, n)
	if n != f.run || len(f.tasks) == 0 {
		return f.endRun(), nil
	}
	task := f.tasks[0]
	f.tasks = f.tasks[1:]
	return task, nil
}

func (f *fakeServer) endRun() *fedlearn.CurrentTask {
	var task fedlearn.CurrentTask
	if err := protobuf.Unmarshal(flaretest.Fixture(f.t, "wire", "gettask-__end_run__.CurrentTask.pb"), &task); err != nil {
		f.t.Error(err)
	}
	return &task
}

func (f *fakeServer) SubmitUpdate(ctx context.Context, req *fedlearn.Contribution) (*fedlearn.FederatedSummary, error) {
	if err := f.check(req.Client.GetToken()); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.submits = append(f.submits, req)
	return &fedlearn.FederatedSummary{Comment: "Received"}, nil
}

func (f *fakeServer) Retrieve(ctx context.Context, req *admin.Client) (*admin.Messages, error) {
	if err := f.check(req.ClientName); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.polled {
		return &admin.Messages{}, nil
	}
	f.polled = true
	return &admin.Messages{Message: f.adminMsgs}, nil
}

func (f *fakeServer) SendReply(ctx context.Context, req *admin.Reply) (*admin.Empty, error) {
	if err := f.check(req.ClientName); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.replies = append(f.replies, req)
	return &admin.Empty{}, nil
}

// serve serves f on lis until the test ends.
func (f *fakeServer) serve(lis net.Listener) {
	gs := grpc.NewServer()
	fedlearn.RegisterFederatedTrainingServer(gs, f)
	admin.RegisterAdminCommunicatingServer(gs, f)
	go gs.Serve(lis)
	f.t.Cleanup(gs.Stop)
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return lis
}

func capturedTask(t *testing.T, name string) *fedlearn.CurrentTask {
	t.Helper()
	var task fedlearn.CurrentTask
	if err := protobuf.Unmarshal(flaretest.Fixture(t, "wire", name), &task); err != nil {
		t.Fatal(err)
	}
	return &task
}

// A failed task's reason reaches the server in the result's task_error
// header (escaped, bounded) next to EXECUTION_EXCEPTION, and the site's
// log.
func TestFailedTaskReasonSentToServer(t *testing.T) {
	f := &fakeServer{t: t, run: 1, tasks: []*fedlearn.CurrentTask{capturedTask(t, "gettask-train.CurrentTask.pb")}}
	lis := listen(t)
	f.serve(lis)
	logs := &flaretest.Log{T: t}
	reason := "reading /nope/site-3: no such file or directory\nclient site-1: forged line"
	c := &Client{Name: "site-1", Wire: wire20.Wire{}, Target: lis.Addr().String(), Logf: logs.Logf,
		Tasks: map[string]flare.Executor{"train": failExecutor{errors.New(reason)}}}
	if err := c.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(f.submits) != 1 {
		t.Fatalf("%d results submitted", len(f.submits))
	}
	sh, err := wire20.DecodeShareable(f.submits[0].Data.Params["data"].Ndarray)
	if err != nil {
		t.Fatal(err)
	}
	want := `reading /nope/site-3: no such file or directory\nclient site-1: forged line`
	if got := sh.HeaderString(flare.HeaderTaskError); sh.ReturnCode() != flare.RCExecutionException || got != want {
		t.Fatalf("result rc %s, task_error %q; want %s, %q", sh.ReturnCode(), got, flare.RCExecutionException, want)
	}
	if logs.Count(`task "train" failed: `+want) != 1 {
		t.Fatalf("the site did not log the reason")
	}
}

type failExecutor struct{ err error }

func (e failExecutor) Execute(ctx context.Context, task string, data *flare.Shareable, fl *flare.FLContext) (*flare.Shareable, error) {
	return nil, e.err
}

func TestTaskErrorTextEscapedAndBounded(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"plain", "plain"},
		{"a\nb\r\x00c\x1b[31m", `a\nb\r\x00c\x1b[31m`},
		{"bad \xff utf-8 é", `bad \xff utf-8 é`},
		{"line\u2028sep", `line\u2028sep`},
	} {
		if got := taskErrorText(errors.New(c.in)); got != c.want {
			t.Errorf("%q → %q, want %q", c.in, got, c.want)
		}
	}
	long := taskErrorText(errors.New(strings.Repeat("é\n", 2000)))
	if len(long) > maxTaskErrorBytes || !strings.HasSuffix(long, "...(6000 bytes)") {
		t.Fatalf("%d bytes: %q…", len(long), long[:40])
	}
}

// plantVictim makes a folder beside the workspace that an escaping path
// would reach: parent/victim/app_site-1/keep.txt.
func plantVictim(t *testing.T) (ws, keep string) {
	t.Helper()
	parent := t.TempDir()
	ws = filepath.Join(parent, "ws")
	keep = filepath.Join(parent, "victim", "app_site-1", "keep.txt")
	if err := os.MkdirAll(ws, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(keep), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keep, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	return ws, keep
}

// A server (or one posing as it) names run numbers that would walk out of
// the workspace, on every admin request that makes a path of one: each
// is refused and nothing outside the workspace is removed or written.
func TestAdminRunNumberPathTraversalRefused(t *testing.T) {
	app := flaretest.ZipOf(t, "config/config_fed_client.json", "{}")
	for _, run := range []string{"/../../victim", "../victim", "1/../../../victim", "-1", "+1", " 1", "1 ", "1e3", "0x10",
		"", "１", strings.Repeat("9", 19), "1\x00", "../" + strings.Repeat("a", 1000)} {
		ws, keep := plantVictim(t)
		c := &Client{Name: "site-1"}
		started := false
		h := AdminHandler{Workspace: ws, Start: func(string) (map[string]flare.Executor, error) { started = true; return nil, nil }}
		st := &adminState{run: -1, workDone: make(chan workResult, 1)}
		for _, m := range []*admin.Message{
			wire20.NewAdminMessage(flare.TopicSetRunNumber, run, nil),
			wire20.NewAdminMessage(flare.TopicDeploy, run, app, "app_name", "app"),
			wire20.NewAdminMessage(flare.TopicStart, run, nil),
			wire20.NewAdminMessage(flare.TopicDeleteRun, run, nil),
		} {
			_, body, _, err := c.handleMessage(context.Background(), m, st, h)
			if err == nil {
				t.Errorf("%s with run_number %q accepted: %s", m.Topic, run, body)
			} else if !strings.Contains(err.Error(), "not a non-negative decimal integer") {
				t.Errorf("%s with run_number %q: %v", m.Topic, run, err)
			}
		}
		if _, err := os.Stat(keep); err != nil {
			t.Fatalf("run_number %q: the folder outside the workspace was removed: %v", run, err)
		}
		if _, err := os.Stat(filepath.Join(filepath.Dir(keep), "config")); err == nil {
			t.Fatalf("run_number %q: the app was unpacked outside the workspace", run)
		}
		if started || st.run != -1 {
			t.Fatalf("run_number %q: started %v, run %d", run, started, st.run)
		}
	}
}

// A deploy whose app name is not a plain name is refused before anything
// is written; good run numbers (leading zeros read as NVFlare's int()
// does) land in WORKSPACE/run_N.
func TestAdminDeployRefusesBadAppNames(t *testing.T) {
	app := flaretest.ZipOf(t, "config/config_fed_client.json", "{}")
	ws, _ := plantVictim(t)
	c := &Client{Name: "site-1"}
	h := AdminHandler{Workspace: ws}
	st := &adminState{run: -1, workDone: make(chan workResult, 1)}
	for _, name := range []string{"", ".", "..", "../victim", "a/b", `a\b`, "a\nb", "x\x1b[2J", strings.Repeat("a", 256), "bad\xff"} {
		if _, _, _, err := c.handleMessage(context.Background(), wire20.NewAdminMessage(flare.TopicDeploy, "3", app, "app_name", name), st, h); err == nil || !strings.Contains(err.Error(), "bad app name") {
			t.Errorf("app name %q: %v", name, err)
		}
	}
	if entries, _ := os.ReadDir(ws); len(entries) != 0 {
		t.Fatalf("refused deploys wrote %v", entries)
	}
	if _, _, _, err := c.handleMessage(context.Background(), wire20.NewAdminMessage(flare.TopicDeploy, "007", app, "app_name", "app"), st, h); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(ws, "run_7", "app_site-1", "config", "config_fed_client.json")); err != nil {
		t.Fatal(err)
	}
}

// A client whose server is not there says so once, with the address,
// not once a retry; it says so again when the server answers; stopped
// while it waits, it says that too instead of "context canceled".
func TestClientLogsWaitingForServer(t *testing.T) {
	lis := listen(t)
	addr := lis.Addr().String()
	lis.Close() // nothing listens there for now

	logs := &flaretest.Log{T: t}
	c := &Client{Name: "site-1", Wire: wire20.Wire{}, Target: addr, Logf: logs.Logf, GiveUp: time.Minute}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.RunAdmin(ctx, AdminHandler{Workspace: t.TempDir()}) }()
	time.Sleep(2 * time.Second) // several retries
	if n := logs.Count("no answer from the server at " + addr); n != 1 {
		t.Fatalf("%d lines say the server does not answer, want 1", n)
	}
	if n := logs.Count("registering with the server at " + addr); n != 1 {
		t.Fatalf("%d lines say the client registers, want 1", n)
	}

	// The server comes: the client says so and registers.
	lis2, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeServer{t: t, run: 1}
	f.serve(lis2)
	for deadline := time.Now().Add(10 * time.Second); logs.Count("client site-1: registered") == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the client did not register")
		}
	}
	if n := logs.Count("answers again"); n != 1 {
		t.Fatalf("%d lines say the server answers again, want 1", n)
	}
	cancel()
	err = <-done
	if err == nil || !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "client site-1 stopped (interrupted)") {
		t.Fatalf("stopped client: %v", err)
	}
}

// Stopped while it waits for a server that is not there, the client says
// what it waited for.
func TestClientInterruptedWhileWaitingForServer(t *testing.T) {
	lis := listen(t)
	addr := lis.Addr().String()
	lis.Close()
	c := &Client{Name: "site-1", Wire: wire20.Wire{}, Target: addr, Logf: t.Logf}
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	go func() { time.Sleep(500 * time.Millisecond); cancel() }()
	err := c.Run(ctx)
	want := "client site-1 stopped (interrupted) while waiting for the server at " + addr + " (register)"
	if err == nil || err.Error() != want || !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want %q", err, want)
	}
}

// capturedAdminRun is what a real NVFlare 2.0.5 server sent on the admin
// channel to start a run (set_run_number, deploy with the app, start),
// renumbered to run.
func capturedAdminRun(t *testing.T, run string) []*admin.Message {
	t.Helper()
	var out []*admin.Message
	for _, name := range []string{"0007_Retrieve_resp.bin", "0011_Retrieve_resp.bin", "0016_Retrieve_resp.bin"} {
		var msgs admin.Messages
		if err := protobuf.Unmarshal(flaretest.Fixture(t, "captured", name), &msgs); err != nil {
			t.Fatal(err)
		}
		m := msgs.Message[0]
		m.Headers["run_number"] = run
		out = append(out, m)
	}
	return out
}

// The server runs run 2 (as after set_run_number 2): the client asks for
// its tasks in run 2 and trains; NVFlare 2.0.5's server would end the
// run of a client that said run 1, as flarego's client always did.
func TestClientSendsTheRunNumberTheServerSet(t *testing.T) {
	f := &fakeServer{t: t, run: 2, adminMsgs: capturedAdminRun(t, "2"),
		tasks: []*fedlearn.CurrentTask{capturedTask(t, "gettask-train.CurrentTask.pb")}}
	lis := listen(t)
	f.serve(lis)
	logs := &flaretest.Log{T: t}
	c := &Client{Name: "site-1", Wire: wire20.Wire{}, Target: lis.Addr().String(), Logf: logs.Logf}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ws := t.TempDir()
	done := make(chan error, 1)
	go func() {
		done <- c.RunAdmin(ctx, AdminHandler{Workspace: ws, Start: func(string) (map[string]flare.Executor, error) {
			return map[string]flare.Executor{"train": flaretest.AddExecutor{Delta: 1, Steps: 1}}, nil
		}})
	}()
	for deadline := time.Now().Add(10 * time.Second); logs.Count("run 2 done") == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("run 2 did not end")
		}
	}
	cancel()
	<-done
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.submits) != 1 {
		t.Fatalf("%d results submitted in run 2, want 1 (GetTask run numbers %v)", len(f.submits), f.getTasks)
	}
	for _, n := range f.getTasks {
		if n != 2 {
			t.Fatalf("GetTask named runs %v, want 2", f.getTasks)
		}
	}
	if got := f.submits[0].Client.GetMeta().GetRunNumber(); got != 2 {
		t.Fatalf("SubmitUpdate meta names run %d", got)
	}
	if _, err := os.Stat(filepath.Join(ws, "run_2", "app_site-1", "config", "config_fed_client.json")); err != nil {
		t.Fatal(err)
	}
}

// A client told to end a run in which it got no task says so, instead
// of "run N done".
func TestClientWarnsOfRunEndedWithoutTask(t *testing.T) {
	f := &fakeServer{t: t, run: 2, adminMsgs: capturedAdminRun(t, "1"),
		tasks: []*fedlearn.CurrentTask{capturedTask(t, "gettask-train.CurrentTask.pb")}}
	lis := listen(t)
	f.serve(lis)
	logs := &flaretest.Log{T: t}
	c := &Client{Name: "site-1", Wire: wire20.Wire{}, Target: lis.Addr().String(), Logf: logs.Logf}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- c.RunAdmin(ctx, AdminHandler{Workspace: t.TempDir(), Start: func(string) (map[string]flare.Executor, error) {
			return map[string]flare.Executor{"train": flaretest.AddExecutor{Delta: 1, Steps: 1}}, nil
		}})
	}()
	for deadline := time.Now().Add(10 * time.Second); logs.Count("run 1 ended without a task") == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the client did not say run 1 ended without a task")
		}
	}
	cancel()
	<-done
	if logs.Count("warning: client site-1: the server ended the run before giving this client any task (this client named run 1") != 1 || logs.Count("run 1 done") != 0 {
		t.Fatal("no warning, or the run was called done")
	}
}

// run2 reads a file of the two-run capture of a real NVFlare 2.0.5 server
// (testdata/nvflare/captured-run2: client is "fixed-client", flarego's
// client as it is now, or "run1-client", the one that always said run 1).
func run2(t *testing.T, client, name string, m protobuf.Message) {
	t.Helper()
	if err := protobuf.Unmarshal(flaretest.Fixture(t, "captured-run2", client, name), m); err != nil {
		t.Fatalf("%s/%s: %v", client, name, err)
	}
}

func runNumOf(t *testing.T, st *fedlearn.ClientState) any {
	t.Helper()
	fl, err := wire20.DecodeFLContext(st.Context["fl_context"].GetNdarray())
	if err != nil {
		t.Fatal(err)
	}
	v, _ := fl.Get("__run_num__")
	return v
}

// Run 2 on a real NVFlare 2.0.5 server: the recorded traffic shows it
// ends the run of a client that asks in run 1 (as flarego's client did)
// and hands "train" to one that asks in run 2; replayed, its run-2
// requests make flarego's client ask in run 2 and train.
func TestClientTakesRun2OfNVFlareServer(t *testing.T) {
	var req fedlearn.ClientState
	var resp fedlearn.CurrentTask
	run2(t, "run1-client", "0050_GetTask_req.bin", &req)
	run2(t, "run1-client", "0050_GetTask_resp.bin", &resp)
	if runNumOf(t, &req) != int64(1) || resp.TaskName != flare.TaskEndRun {
		t.Fatalf("recorded run-2 GetTask of the run-1 client: run %v, answer %s", runNumOf(t, &req), resp.TaskName)
	}
	run2(t, "fixed-client", "0048_GetTask_req.bin", &req)
	run2(t, "fixed-client", "0048_GetTask_resp.bin", &resp)
	if runNumOf(t, &req) != int64(2) || resp.TaskName != "train" {
		t.Fatalf("recorded run-2 GetTask: run %v, answer %s", runNumOf(t, &req), resp.TaskName)
	}

	f := &fakeServer{t: t, run: 2, tasks: []*fedlearn.CurrentTask{&resp}}
	for _, name := range []string{"0037_Retrieve_resp.bin", "0041_Retrieve_resp.bin", "0045_Retrieve_resp.bin"} {
		var msgs admin.Messages
		run2(t, "fixed-client", name, &msgs)
		f.adminMsgs = append(f.adminMsgs, msgs.Message...)
	}
	if f.adminMsgs[0].Topic != flare.TopicSetRunNumber || f.adminMsgs[0].Headers["run_number"] != "2" || f.adminMsgs[2].Topic != flare.TopicStart {
		t.Fatalf("recorded admin requests: %v", f.adminMsgs)
	}
	lis := listen(t)
	f.serve(lis)
	logs := &flaretest.Log{T: t}
	c := &Client{Name: "site-1", Wire: wire20.Wire{}, Target: lis.Addr().String(), Logf: logs.Logf}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- c.RunAdmin(ctx, AdminHandler{Workspace: t.TempDir(), Start: func(string) (map[string]flare.Executor, error) {
			return map[string]flare.Executor{"train": flaretest.AddExecutor{Delta: 1, Steps: 1}}, nil
		}})
	}()
	for deadline := time.Now().Add(10 * time.Second); logs.Count("run 2 done") == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("run 2 did not end")
		}
	}
	cancel()
	<-done
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.submits) != 1 || fmt.Sprint(f.getTasks) != "[2 2]" {
		t.Fatalf("%d results; GetTask in runs %v", len(f.submits), f.getTasks)
	}
	var sub fedlearn.Contribution
	run2(t, "fixed-client", "0051_SubmitUpdate_req.bin", &sub)
	if got, want := f.submits[0].Client.GetMeta().GetRunNumber(), sub.Client.GetMeta().GetRunNumber(); got != 2 || want != 2 {
		t.Fatalf("SubmitUpdate meta run %d, recorded %d", got, want)
	}
}

// A server's __wait_time__ of NaN, Inf, 1e300 or 1e-9 neither makes the
// client poll in a tight loop nor sleep for ever.
func TestTryAgainWaitTimeBounded(t *testing.T) {
	for _, c := range []struct {
		w    any
		want time.Duration
	}{
		{math.NaN(), 2 * time.Second}, {math.Inf(1), 2 * time.Second}, {math.Inf(-1), 50 * time.Millisecond},
		{1e300, 2 * time.Second}, {-1.0, 50 * time.Millisecond}, {1e-9, 50 * time.Millisecond},
		{0.5, 500 * time.Millisecond}, {int64(1 << 62), 2 * time.Second}, {"soon", 2 * time.Second},
	} {
		sh := flare.NewShareable()
		sh.Extra = append(sh.Extra, pickle.Item{Key: flare.HeaderWaitTime, Value: c.w})
		data, err := wire20.EncodeShareable(sh)
		if err != nil {
			t.Fatal(err)
		}
		task, err := wire20.DecodeTask(&fedlearn.CurrentTask{TaskName: flare.TaskTryAgain, Data: &fedlearn.ModelData{Params: map[string]*fedlearn.NDArray{"data": {Ndarray: data}}}})
		if err != nil {
			t.Fatal(err)
		}
		if got := tryAgainAfter(task); got != c.want {
			t.Errorf("__wait_time__ %v: waits %s, want %s", c.w, got, c.want)
		}
	}
}

// Whatever run number and app name a server sends, deploy, start and
// delete_run touch nothing outside the workspace.
func FuzzAdminPathsStayInWorkspace(f *testing.F) {
	for _, s := range [][2]string{{"1", "app"}, {"/../../victim", "app"}, {"../x", "../x"}, {"-1", "a/b"}, {"007", "app\n"},
		{"1/../..", ".."}, {strings.Repeat("9", 19), "x"}, {"１", "app"}, {"0", `a\b`}} {
		f.Add(s[0], s[1])
	}
	app := flaretest.ZipOf(f, "config/config_fed_client.json", "{}")
	f.Fuzz(func(t *testing.T, run, name string) {
		ws, keep := plantVictim(t)
		parent := filepath.Dir(ws)
		c := &Client{Name: "site-1"}
		h := AdminHandler{Workspace: ws, Start: func(string) (map[string]flare.Executor, error) { return map[string]flare.Executor{}, nil }}
		st := &adminState{run: -1, workDone: make(chan workResult, 1)}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		for _, m := range []*admin.Message{wire20.NewAdminMessage(flare.TopicSetRunNumber, run, nil), wire20.NewAdminMessage(flare.TopicDeploy, run, app, "app_name", name),
			wire20.NewAdminMessage(flare.TopicStart, run, nil), wire20.NewAdminMessage(flare.TopicCheckStatus, run, nil), wire20.NewAdminMessage(flare.TopicDeleteRun, run, nil)} {
			c.handleMessage(ctx, m, st, h)
		}
		if _, err := os.Stat(keep); err != nil {
			t.Fatalf("run %q app %q removed %s", run, name, keep)
		}
		entries, _ := os.ReadDir(parent)
		if len(entries) != 2 {
			t.Fatalf("run %q app %q wrote beside the workspace: %v", run, name, entries)
		}
		if entries, _ := os.ReadDir(filepath.Dir(keep)); len(entries) != 1 {
			t.Fatalf("run %q app %q wrote into victim: %v", run, name, entries)
		}
	})
}

// slowRegister answers Register only after a while.
type slowRegister struct {
	*fakeServer
	delay time.Duration
}

func (s slowRegister) Register(ctx context.Context, req *fedlearn.ClientLogin) (*fedlearn.FederatedSummary, error) {
	time.Sleep(s.delay)
	return s.fakeServer.Register(ctx, req)
}

// A server that takes a request and is slow to answer is not met with
// silence: the client says it still waits, and when the answer came.
func TestClientLogsSlowAnswer(t *testing.T) {
	defer func(d time.Duration) { slowAnswer = d }(slowAnswer)
	slowAnswer = 100 * time.Millisecond
	f := &fakeServer{t: t, run: 1}
	lis := listen(t)
	gs := grpc.NewServer()
	fedlearn.RegisterFederatedTrainingServer(gs, slowRegister{f, 500 * time.Millisecond})
	go gs.Serve(lis)
	defer gs.Stop()
	logs := &flaretest.Log{T: t}
	c := &Client{Name: "site-1", Wire: wire20.Wire{}, Target: lis.Addr().String(), Logf: logs.Logf}
	if err := c.connect(); err != nil {
		t.Fatal(err)
	}
	defer c.tr.Close()
	if err := c.register(context.Background()); err != nil {
		t.Fatal(err)
	}
	if logs.Count("register: no answer from the server at "+c.Target+" after 100ms; still waiting") != 1 || logs.Count("register: the server at "+c.Target+" answered after") != 1 {
		t.Fatal("the slow answer was not reported")
	}
}

// forgetful refuses every token it gave.
type forgetful struct{ *fakeServer }

func (forgetful) Retrieve(ctx context.Context, req *admin.Client) (*admin.Messages, error) {
	return nil, status.Error(codes.Unauthenticated, "unknown token")
}

// A server that refuses every new registration's token is not asked
// again and again without end.
func TestClientGivesUpOnServerForgettingEveryToken(t *testing.T) {
	f := &fakeServer{t: t, run: 1}
	lis := listen(t)
	gs := grpc.NewServer()
	fedlearn.RegisterFederatedTrainingServer(gs, f)
	admin.RegisterAdminCommunicatingServer(gs, forgetful{f})
	go gs.Serve(lis)
	defer gs.Stop()
	logs := &flaretest.Log{T: t}
	c := &Client{Name: "site-1", Wire: wire20.Wire{}, Target: lis.Addr().String(), Logf: logs.Logf}
	err := c.RunAdmin(context.Background(), AdminHandler{Workspace: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "refuses the token of each new registration") {
		t.Fatalf("error %v", err)
	}
	if n := logs.Count("client site-1: registered"); n != 1+maxReRegister {
		t.Fatalf("registered %d times", n)
	}
}

// The client retries what a busy or slow server answers, and only that:
// the wire says which calls those are (wire20.TestCallErrorKinds).
func TestTransientErrors(t *testing.T) {
	for kind, want := range map[flare.CallErrorKind]bool{flare.Unavailable: true, flare.TimedOut: true,
		flare.Refused: false, flare.UnknownToken: false, flare.Canceled: false} {
		if got := transient(&flare.CallError{Kind: kind, Err: errors.New("x")}); got != want {
			t.Errorf("kind %d: retried %v, want %v", kind, got, want)
		}
	}
	if transient(errors.New("not a call error")) {
		t.Error("a plain error was retried")
	}
}

// handleMessage runs handleAdmin on an admin channel message as the wire
// decodes it, and returns the reply as the wire sends it.
func (c *Client) handleMessage(ctx context.Context, m *admin.Message, st *adminState, h AdminHandler) (bodyType string, body []byte, stop bool, err error) {
	req := wire20.AdminRequestOf(m)
	reply, stop, err := c.handleAdmin(ctx, req, st, h)
	if err != nil {
		return "", nil, stop, err
	}
	rm, err := wire20.ReplyMessage(req, reply)
	if err != nil {
		return "", nil, stop, err
	}
	return rm.BodyType, rm.Body, stop, nil
}
