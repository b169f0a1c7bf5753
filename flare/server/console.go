package server

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/hci"
)

// console is a Server's admin console: NVFlare 2.0's operator commands,
// each a method that answers on its hci.Conn.
type console struct {
	s         *Server
	workspace string
	build     func(appDir string) (*flare.ServerConfig, *flare.Registry, error)
	timeout   time.Duration // how long to wait for clients' replies; s.mu guards it
}

// uploadDir is where uploaded apps are staged (NVFlare's admin_storage).
func (con *console) uploadDir() string { return filepath.Join(con.workspace, "transfer") }

func (con *console) runDir(n int) string {
	return filepath.Join(con.workspace, "run_"+strconv.Itoa(n))
}

// Console makes the server's admin console, NVFlare 2.0's operator
// commands over its hci protocol: upload_app (file_transfer._upload_folder),
// set_run_number, deploy_app, start_app, check_status, abort, shutdown,
// remove_client and set_timeout. Apps are staged in WORKSPACE/transfer and
// deployed to WORKSPACE/run_N/app_server; build makes the server side of a
// deployed app. Serve the returned hci.Server on the admin port.
func (s *Server) Console(workspace string, build func(appDir string) (*flare.ServerConfig, *flare.Registry, error)) *hci.Server {
	con := &console{s: s, workspace: workspace, build: build, timeout: 10 * time.Second}
	s.console = con
	cmd := func(name, usage, desc, confirm string, h func(*hci.Conn)) hci.Command {
		return hci.Command{Scope: "training", Name: name, Usage: usage, Desc: desc, Confirm: confirm, Visible: true, Handler: h}
	}
	ft := func(name string, h func(*hci.Conn)) hci.Command {
		return hci.Command{Scope: "file_transfer", Name: name, Handler: h}
	}
	return &hci.Server{
		Logf:       s.Logf,
		OnShutdown: s.consoleShutdown,
		Commands: []hci.Command{
			ft("_upload_folder", con.cmdUpload),
			ft("_info", func(c *hci.Conn) {
				c.String("Server Upload Destination: %s", con.uploadDir())
				c.String("Server Download Source: %s", con.uploadDir())
			}),
			cmd("set_run_number", "set_run_number number", "set the run number", "", con.cmdSetRunNumber),
			cmd("deploy_app", "deploy_app app server|client <client-name>|all", "deploy FL app to client/server", "", con.cmdDeploy),
			cmd("start_app", "start_app server|client|all", "start the FL app", "", con.cmdStart),
			cmd("check_status", "check_status server|client", "check status of the FL server/client", "", con.cmdCheckStatus),
			cmd("abort", "abort server|client|all", "abort the FL app", "", con.cmdAbort),
			cmd("shutdown", "shutdown server|client|all", "shutdown the FL server/client", "auth", con.cmdShutdown),
			cmd("remove_client", "remove_client <client-name>", "remove a FL client", "auth", con.cmdRemoveClient),
			cmd("set_timeout", "set_timeout seconds ", "set the admin commands timeout", "", con.cmdSetTimeout),
			cmd("abort_task", "abort_task <client-name>", "abort the client current task execution", "", con.cmdAbortTask),
			cmd("delete_run_number", "delete_run_number number", "delete a run", "auth", con.cmdDeleteRun),
			{Scope: "sys", Name: "sys_info", Usage: "sys_info server|client <client-name> ...", Desc: "get the system info", Visible: true, Handler: con.cmdSysInfo},
		},
	}
}

func (s *Server) consoleShutdown() {
	s.mu.Lock()
	s.shutdown = true
	cancel := s.cancel
	s.mu.Unlock()
	if cancel != nil {
		cancel(nil)
	}
}

// cmdUpload stages an app: NAME, then the base64 zip of NAME/... that
// NVFlare's console makes of the folder.
func (con *console) cmdUpload(c *hci.Conn) {
	if len(c.Args) != 3 {
		c.Error("syntax error: require data")
		return
	}
	name := c.Args[1]
	if err := flare.CheckPathName("app name", name); err != nil {
		c.Error("%v", err)
		return
	}
	data, err := base64.StdEncoding.DecodeString(c.Args[2])
	if err != nil {
		c.Error("app %s: data is not base64", name)
		return
	}
	if err := os.MkdirAll(con.uploadDir(), 0o700); err != nil {
		c.Error("%v", err)
		return
	}
	tmp, err := os.MkdirTemp(con.uploadDir(), ".upload-")
	if err != nil {
		c.Error("%v", err)
		return
	}
	defer os.RemoveAll(tmp)
	if err := flare.UnzipApp(data, tmp); err != nil {
		c.Error("app %s: %v", name, err)
		return
	}
	entries, err := os.ReadDir(tmp)
	if err != nil || len(entries) != 1 || entries[0].Name() != name || !entries[0].IsDir() {
		c.Error("app %s: the upload must hold exactly the folder %s", name, name)
		return
	}
	dst := filepath.Join(con.uploadDir(), name)
	if err := os.RemoveAll(dst); err != nil {
		c.Error("%v", err)
		return
	}
	if err := os.Rename(filepath.Join(tmp, name), dst); err != nil {
		c.Error("%v", err)
		return
	}
	c.String("Created folder %s", dst)
	if plain := flare.PlaintextCode(dst); len(plain) > 0 {
		c.String("warning: app %s holds model code in plaintext, sent as is to every client: %s", name, strings.Join(plain, ", "))
	}
}

func (con *console) cmdSetRunNumber(c *hci.Conn) {
	s := con.s
	if len(c.Args) < 2 {
		c.Error("syntax error: missing run number")
		return
	}
	n, err := strconv.Atoi(c.Args[1])
	if err != nil {
		c.Error("run number must be an integer.")
		return
	}
	if n < 1 {
		c.Error("run number must be > 0.")
		return
	}
	s.mu.Lock()
	if s.running() {
		s.mu.Unlock()
		c.Error("run_number can not be changed during the FL app running.")
		return
	}
	s.runNumber = n
	s.mu.Unlock()
	dir := con.runDir(n)
	if _, err := os.Stat(dir); err == nil {
		c.String("run number already exists. Set the FL run number to %d.", n)
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		c.Error("%v", err)
		return
	} else {
		c.String("Created a new run folder: run_%d", n)
	}
	con.tableToClients(c, s.allClients(), flare.NewAdminRequest(flare.TopicSetRunNumber, strconv.Itoa(n), nil))
}

// running says whether a server app is starting or started; s.mu held.
func (s *Server) running() bool {
	return s.run != nil && s.run.status != statusStopped
}

// target is a command's target: the server and/or clients.
type target struct {
	server  bool
	clients []*clientEntry
}

// targets reads a command's target words; a bad target is reported on c
// and gives false.
func (con *console) targets(c *hci.Conn, args []string) (target, bool) {
	t, err := con.parseTargets(args)
	if err != nil {
		c.Error("%v", err)
		return target{}, false
	}
	return t, true
}

// parseTargets reads "server", "client [NAME ...]" or "all" as NVFlare does.
func (con *console) parseTargets(args []string) (target, error) {
	s := con.s
	if len(args) < 1 {
		return target{}, errors.New("missing target type (server or client)")
	}
	switch args[0] {
	case "server":
		return target{server: true}, nil
	case "all":
		return target{server: true, clients: s.allClients()}, nil
	case "client":
	default:
		return target{}, fmt.Errorf("unknown target type %s", args[0])
	}
	all := s.allClients()
	if len(args) == 1 {
		if len(all) == 0 {
			return target{}, errors.New("no clients available")
		}
		return target{clients: all}, nil
	}
	byName := map[string]*clientEntry{}
	for _, c := range all {
		byName[c.name] = c
	}
	var t target
	var bad []string
	for _, n := range args[1:] {
		if c, ok := byName[n]; ok {
			t.clients = append(t.clients, c)
		} else {
			bad = append(bad, n)
		}
	}
	if len(bad) > 0 {
		return target{}, fmt.Errorf("invalid client(s): %s", strings.Join(bad, " "))
	}
	return t, nil
}

// allClients are the registered clients, by name.
func (s *Server) allClients() []*clientEntry {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dropDead()
	out := make([]*clientEntry, 0, len(s.clients))
	for _, c := range s.clients {
		cc := *c
		out = append(out, &cc)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

// request sends m to the clients and waits up to the console's timeout
// for their replies; a client that did not answer has a nil reply.
func (con *console) request(clients []*clientEntry, m *flare.AdminRequest) []*flare.AdminReply {
	s := con.s
	s.mu.Lock()
	timeout := con.timeout
	s.mu.Unlock()
	return s.requestWithin(clients, m, timeout)
}

// requestWithin is request with its own timeout.
func (s *Server) requestWithin(clients []*clientEntry, m *flare.AdminRequest, timeout time.Duration) []*flare.AdminReply {
	tokens := make([]string, len(clients))
	for i, c := range clients {
		tokens[i] = c.token
	}
	chans := s.admin.send(tokens, m)
	defer s.admin.cancel(tokens, m)
	s.mu.Lock()
	ctx := s.ctx
	s.mu.Unlock()
	if ctx == nil {
		ctx = context.Background()
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	out := make([]*flare.AdminReply, len(clients))
	for i, tok := range tokens {
		select {
		case r := <-chans[tok]:
			out[i] = r
		case <-deadline.C:
			return out
		case <-ctx.Done():
			return out
		}
	}
	return out
}

// tableToClients sends m and shows the replies as NVFlare does.
func (con *console) tableToClients(c *hci.Conn, clients []*clientEntry, m *flare.AdminRequest) {
	if len(clients) == 0 {
		return
	}
	replies := con.request(clients, m)
	rows := make([][]string, len(clients))
	for i, cl := range clients {
		body := ""
		if replies[i] != nil {
			body = string(replies[i].Text)
		} else {
			body = "no reply within " + con.timeout.String()
		}
		rows[i] = []string{cl.name, body}
	}
	c.Table([]string{"Client", "Response"}, rows)
}

func (con *console) cmdDeploy(c *hci.Conn) {
	s := con.s
	if len(c.Args) < 3 {
		c.Error("syntax error: missing target")
		return
	}
	s.mu.Lock()
	run := s.runNumber
	s.mu.Unlock()
	if run < 0 {
		c.Error("Please set a run number.")
		return
	}
	t, ok := con.targets(c, c.Args[2:])
	if !ok {
		return
	}
	name := c.Args[1]
	if err := flare.CheckPathName("app name", name); err != nil {
		c.Error("%v", err)
		return
	}
	src := filepath.Join(con.uploadDir(), name)
	if st, err := os.Stat(src); err != nil || !st.IsDir() {
		c.Error("App folder '%s' does not exist in staging area.", name)
		return
	}
	if t.server {
		s.mu.Lock()
		busy := s.running()
		s.mu.Unlock()
		if busy {
			c.Error("the server app of run %d is running; abort it or wait for it to end", run)
			return
		}
		dst := filepath.Join(con.runDir(run), "app_server")
		app, err := flare.ZipApp(src)
		if err == nil {
			if err = os.RemoveAll(dst); err == nil {
				err = flare.UnzipApp(app, dst)
			}
		}
		if err == nil {
			err = os.WriteFile(filepath.Join(con.runDir(run), "fl_app.txt"), []byte(name), 0o600)
		}
		if err != nil {
			c.Error("deploying app %s to the server: %v", name, err)
			return
		}
		c.String("deployed app %q to Server", name)
	}
	if len(t.clients) > 0 {
		app, err := flare.ZipApp(src)
		if err != nil {
			c.Error("app %s: %v", name, err)
			return
		}
		if plain := flare.PlaintextCode(src); len(plain) > 0 {
			s.logf("warning: app %q sends model code in plaintext to every client: %s", name, strings.Join(plain, ", "))
		}
		con.tableToClients(c, t.clients, flare.NewAdminRequest(flare.TopicDeploy, strconv.Itoa(run), app, "app_name", name))
	}
	c.Success("")
}

func (con *console) cmdStart(c *hci.Conn) {
	s := con.s
	t, ok := con.targets(c, c.Args[1:])
	if !ok {
		return
	}
	if t.server {
		if err := con.startServerApp(); err != nil {
			c.Error("%v", err)
			return
		}
		c.String("Server app is starting....")
	}
	if len(t.clients) > 0 {
		s.mu.Lock()
		ready := s.running()
		run := s.runNumber
		s.mu.Unlock()
		if !ready {
			c.Error("Server app has not started.")
			return
		}
		con.tableToClients(c, t.clients, flare.NewAdminRequest(flare.TopicStart, strconv.Itoa(run), nil))
	}
	c.Success("")
}

// startServerApp starts the app deployed for the current run number.
func (con *console) startServerApp() error {
	s := con.s
	s.mu.Lock()
	n, busy, ctx := s.runNumber, s.running(), s.ctx
	s.mu.Unlock()
	// NVFlare's console answers in these words (its admin tools show them).
	if n < 0 {
		return errors.New("Please set a run number.") //lint:ignore ST1005 NVFlare's wording
	}
	if busy {
		return errors.New("Server already starting or started.") //lint:ignore ST1005 NVFlare's wording
	}
	if ctx == nil {
		return errors.New("the server is not serving")
	}
	dir := filepath.Join(con.runDir(n), "app_server")
	if _, err := os.Stat(dir); err != nil {
		return errors.New("Server app does not exist. Please deploy the server app before starting.") //lint:ignore ST1005 NVFlare's wording
	}
	if con.build == nil {
		return errors.New("this server cannot start apps")
	}
	cfg, reg, err := con.build(dir)
	if err != nil {
		return fmt.Errorf("server app: %w", err)
	}
	name, _ := os.ReadFile(filepath.Join(con.runDir(n), "fl_app.txt"))
	r, err := newRun(cfg, reg, n, string(name))
	if err != nil {
		return fmt.Errorf("server app: %w", err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	r.cancel, r.status = cancel, statusStarted
	s.mu.Lock()
	s.run = r
	s.HeartBeatTimeout = heartBeat(cfg)
	s.notify()
	s.mu.Unlock()
	go func() {
		defer cancel()
		s.logf("run %d: app %s started", n, r.app)
		if err := s.workflow(runCtx, r); err != nil {
			s.logf("run %d: app %s stopped: %v", n, r.app, err)
			return
		}
		s.logf("run %d: app %s finished", n, r.app)
	}()
	return nil
}

func (con *console) cmdCheckStatus(c *hci.Conn) {
	s := con.s
	if len(c.Args) < 2 {
		c.Error("invalid target type . Usage: check_status server|client ...")
		return
	}
	switch c.Args[1] {
	case "server":
		s.mu.Lock()
		n, r := s.runNumber, s.run
		app, status, round, rounds, rerr := "?", statusStopped, 0, 0, error(nil)
		if r != nil {
			app, status, rerr = r.app, r.status, r.err
			round, rounds = r.round, r.sag.NumRounds
		}
		s.mu.Unlock()
		c.String("FL_app name: %s", app)
		c.String("Engine status: %s", status)
		if n < 0 {
			c.String("Run number has not been set.")
		} else {
			c.String("Current run number: %d", n)
		}
		if r != nil {
			c.String("Current round: %d of %d", min(round+1, rounds), rounds)
			if rerr != nil {
				c.String("Last run ended with: %v", rerr)
			}
		}
		clients := s.allClients()
		c.String("Registered clients: %d ", len(clients))
		if len(clients) > 0 {
			rows := make([][]string, len(clients))
			for i, cl := range clients {
				rows[i] = []string{cl.name, cl.token, cl.lastSeen.Format(time.ANSIC)}
			}
			c.Table([]string{"Client", "Token", "Last Connect Time"}, rows)
		}
	case "client":
		t, ok := con.targets(c, c.Args[1:])
		if !ok {
			return
		}
		replies := con.request(t.clients, flare.NewAdminRequest(flare.TopicCheckStatus, s.runNumberString(), nil))
		rows := make([][]string, len(t.clients))
		for i, cl := range t.clients {
			rows[i] = []string{cl.name, "?", "?", "No Reply"}
			if replies[i] != nil {
				var st struct {
					App    string `json:"app_name"`
					Run    any    `json:"run_number"`
					Status string `json:"status"`
				}
				if err := json.Unmarshal(replies[i].Text, &st); err == nil {
					rows[i] = []string{cl.name, st.App, fmt.Sprint(st.Run), st.Status}
				} else {
					rows[i][3] = "?"
				}
			}
		}
		c.Table([]string{"client", "app_name", "run_number", "status"}, rows)
	default:
		c.Error("invalid target type %s. Usage: check_status server|client ...", c.Args[1])
	}
}

func (con *console) cmdAbort(c *hci.Conn) {
	s := con.s
	t, ok := con.targets(c, c.Args[1:])
	if !ok {
		return
	}
	if t.server {
		t.clients = s.allClients()
		c.String("Trying to abort all clients before abort server ...")
	}
	if len(t.clients) > 0 {
		con.tableToClients(c, t.clients, flare.NewAdminRequest(flare.TopicAbort, s.runNumberString(), nil))
	}
	if t.server {
		s.mu.Lock()
		r := s.run
		busy := s.running()
		s.mu.Unlock()
		if !busy {
			c.Error("Server app has not started.")
			return
		}
		r.cancel()
		c.String("Abort signal has been sent to the server app.")
	}
	c.Success("")
}

func (con *console) cmdShutdown(c *hci.Conn) {
	s := con.s
	t, ok := con.targets(c, c.Args[1:])
	if !ok {
		return
	}
	if t.server && len(t.clients) == 0 && len(s.allClients()) > 0 {
		c.Error("There are still active clients. Shutdown all clients first.")
		return
	}
	if len(t.clients) > 0 {
		if t.server {
			c.String("Trying to shutdown clients before server...")
		}
		con.tableToClients(c, t.clients, flare.NewAdminRequest(flare.TopicShutdown, s.runNumberString(), nil))
		s.removeClients(t.clients)
	}
	if t.server {
		c.String("FL app has been shutdown.")
		c.Shutdown("Bye bye")
	}
	c.Success("")
}

func (s *Server) removeClients(clients []*clientEntry) {
	s.mu.Lock()
	for _, cl := range clients {
		s.forgetClient(cl.token)
	}
	s.notify()
	s.mu.Unlock()
}

// namedClients are the clients a command's arguments name (at least one).
func (con *console) namedClients(c *hci.Conn) ([]*clientEntry, bool) {
	if len(c.Args) < 2 {
		c.Error("syntax error: missing site names")
		return nil, false
	}
	t, ok := con.targets(c, append([]string{"client"}, c.Args[1:]...))
	if !ok {
		return nil, false
	}
	return t.clients, true
}

func (con *console) cmdRemoveClient(c *hci.Conn) {
	s := con.s
	if clients, ok := con.namedClients(c); ok {
		s.removeClients(clients)
		c.Success("")
	}
}

func (con *console) cmdSetTimeout(c *hci.Conn) {
	s := con.s
	if len(c.Args) != 2 {
		c.Error("syntax error: missing timeout")
		return
	}
	v, err := strconv.ParseFloat(c.Args[1], 64)
	if err != nil {
		c.Error("must provide the timeout value in seconds")
		return
	}
	if v <= 0 || v > 24*3600 {
		c.Error("timeout must be > 0")
		return
	}
	s.mu.Lock()
	con.timeout = time.Duration(v * float64(time.Second))
	s.mu.Unlock()
	c.String("admin command timeout has been set to: %v", v)
	c.Success("")
}

// cmdAbortTask stops the task clients are running; their apps go on and
// take the next task.
func (con *console) cmdAbortTask(c *hci.Conn) {
	s := con.s
	if clients, ok := con.namedClients(c); ok {
		con.tableToClients(c, clients, flare.NewAdminRequest(flare.TopicAbortTask, s.runNumberString(), nil))
	}
}

// cmdDeleteRun removes a run's folder here and on every client.
func (con *console) cmdDeleteRun(c *hci.Conn) {
	s := con.s
	if len(c.Args) != 2 {
		c.Error("syntax error: missing run number")
		return
	}
	n, err := strconv.Atoi(c.Args[1])
	if err != nil || n <= 0 {
		c.Error("run number must be an integer > 0")
		return
	}
	s.mu.Lock()
	busy := s.running() && s.run.number == n
	s.mu.Unlock()
	if busy {
		c.Error("Current running run_number can not be deleted.")
		return
	}
	if err := os.RemoveAll(con.runDir(n)); err != nil {
		c.Error("%v", err)
		return
	}
	if clients := s.allClients(); len(clients) > 0 {
		con.tableToClients(c, clients, flare.NewAdminRequest(flare.TopicDeleteRun, strconv.Itoa(n), nil))
	}
	c.Success("")
}

// cmdSysInfo shows memory facts (NVFlare shows psutil.virtual_memory())
// of the server or of clients.
func (con *console) cmdSysInfo(c *hci.Conn) {
	s := con.s
	if len(c.Args) < 2 {
		c.Error("syntax error: missing site names")
		return
	}
	table := func(info map[string]any) {
		keys := make([]string, 0, len(info))
		for k := range info {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		rows := make([][]string, 0, len(keys)+1)
		for _, k := range keys {
			v := fmt.Sprint(info[k])
			if f, ok := info[k].(float64); ok {
				v = strconv.FormatFloat(f, 'f', -1, 64) // 25276502016, not 2.5276502016e+10
			}
			rows = append(rows, []string{k, v})
		}
		if total, ok := info["total"].(float64); ok && total > 0 {
			if avail, ok := info["available"].(float64); ok {
				rows = append(rows, []string{"available_percent", fmt.Sprintf("%.1f", avail*100/total)})
			}
		}
		c.Table([]string{"Metrics", "Value"}, rows)
	}
	if c.Args[1] == "server" {
		info := map[string]any{}
		for k, v := range flare.SysInfo() {
			info[k] = toFloat(v)
		}
		table(info)
		return
	}
	if c.Args[1] != "client" {
		c.String("invalid target type %s. Usage: sys_info server|client <client-name>", c.Args[1])
		return
	}
	t, ok := con.targets(c, c.Args[1:])
	if !ok {
		return
	}
	replies := con.request(t.clients, flare.NewAdminRequest(flare.TopicSysInfo, s.runNumberString(), nil))
	for i, cl := range t.clients {
		c.String("Client: %s", cl.name)
		var info map[string]any
		switch {
		case replies[i] == nil:
			c.String(": No replies")
		case json.Unmarshal(replies[i].Text, &info) != nil:
			c.String(": Bad replies")
		default:
			table(info)
		}
	}
}

func toFloat(v any) any {
	switch x := v.(type) {
	case int:
		return float64(x)
	case int64:
		return float64(x)
	case uint64:
		return float64(x)
	}
	return v
}
