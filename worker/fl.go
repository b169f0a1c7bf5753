package main

import (
	"context"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/flarego/flarego/fcp"
	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/client"
	"github.com/flarego/flarego/flare/hci"
	"github.com/flarego/flarego/flare/np"
	"github.com/flarego/flarego/flare/server"
	"github.com/flarego/flarego/flare/site"
	"github.com/flarego/flarego/flare/wire20"
	"github.com/flarego/flarego/persistor"
	"github.com/flarego/flarego/pneumonia"
)

// processStart is when the process started, near enough (package
// variables are set before main runs).
var processStart = time.Now()

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// simulate runs the job's server and N clients in this process over
// loopback gRPC, like `nvflare simulator`; site i reads DATA/site-i.
func (c *command) simulate(args []string) error {
	fs := c.flags("simulate", "JOB_DIR -n N [--data DIR] [--output DIR] [--key-file K] [--set key=value ...]")
	n := fs.Int("n", 2, "number of clients")
	data := fs.String("data", "", "folder holding one FCP input root per site: DATA/site-1, DATA/site-2, ... (default: the FCP input folder)")
	workspace := fs.String("w", "", "workspace (unused; for NVFlare's simulator flags)")
	keyFile := fs.String("key-file", "", "key for the encrypted spec and the global model (default: the FCP secret_run_params.json)")
	loc := fcp.Default()
	fs.StringVar(&loc.Output, "output", loc.Output, "where the global model goes (the persistor's /output/...)")
	fs.StringVar(&loc.TBLogs, "tb-logs", "", tbLogsUsage)
	var sets stringList
	fs.Var(&sets, "set", "override a workflow argument, e.g. --set wait_time_after_min_received=0 (repeatable)")
	pos, err := parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	_ = workspace
	if *n < 1 || *n > 1000 {
		return fmt.Errorf("%w: -n must be 1..1000", errUsage)
	}
	if *data == "" {
		*data = loc.Input
	}
	var k *persistor.Key
	loc.Key = *keyFile
	if *keyFile != "" {
		k, err = persistor.ReadKeyFile(*keyFile)
	} else {
		k, err = loc.KeyFile()
	}
	if err != nil {
		return err
	}
	job, err := flare.LoadJob(pos[0])
	if err != nil {
		return err
	}
	if job.Server == nil || job.Client == nil {
		return fmt.Errorf("%s: a simulated job needs both config_fed_server.json and config_fed_client.json", pos[0])
	}
	if err := job.Server.SetWorkflowArgs(sets); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	sag, err := job.Server.ScatterAndGather()
	if err != nil {
		return err
	}
	if sag.MinClients > *n {
		return fmt.Errorf("%w: min_clients is %d but -n simulates %d site(s): the run would wait forever", errUsage, sag.MinClients, *n)
	}
	if cs, err := job.Server.CrossSiteModelEval(); err != nil {
		return err
	} else if cs != nil {
		for _, p := range cs.ParticipatingClients {
			if i, err := strconv.Atoi(strings.TrimPrefix(p, "site-")); err != nil || !strings.HasPrefix(p, "site-") || i < 1 || i > *n {
				return fmt.Errorf("participating_clients names %q, but the simulated sites are site-1 ... site-%d", p, *n)
			}
		}
	}
	// Every site's data and the output folder are checked before the run:
	// a site without data would otherwise fail only when its task comes.
	if st, err := os.Stat(*data); err != nil || !st.IsDir() {
		return fmt.Errorf("--data %s: no such folder (it should hold site-1 ... site-%d, one FCP input folder per site)", *data, *n)
	}
	var noData []string
	for i := 1; i <= *n; i++ {
		if _, err := (fcp.Locations{Input: filepath.Join(*data, fmt.Sprintf("site-%d", i))}).TrainingFolder(); err != nil {
			noData = append(noData, fmt.Sprintf("site-%d (%v)", i, err))
		}
	}
	if len(noData) > 0 {
		shown := noData[:min(len(noData), 5)]
		if len(noData) > len(shown) {
			shown = append(shown, "...")
		}
		return fmt.Errorf("--data %s has no data for %d of %d sites: %s", *data, len(noData), *n, strings.Join(shown, "; "))
	}
	if err := checkOutputDir(loc.Output); err != nil {
		return err
	}
	logf := func(format string, a ...any) { fmt.Fprintf(c.stderr, format+"\n", a...) }
	recipients, err := loc.Recipients()
	if err != nil {
		return err
	}
	srv, err := server.New(job.Server, pneumonia.Registry(pneumonia.Config{JobDir: pos[0], Key: k, Recipients: recipients, Input: loc.Input, Output: loc.Output, Logf: logf}))
	if err != nil {
		return err
	}
	srv.Logf = func(format string, a ...any) { logf("server: "+format, a...) }
	srv.OutputDir, srv.Wire, srv.TBLogs = loc.Output, wire20.ServerWire{}, loc.TensorBoardDir()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	ctx, stop := interruptible()
	defer stop()
	start := time.Now()
	var wg sync.WaitGroup
	clientErrs := make([]error, *n)
	failures := &siteFailures{}
	for i := 0; i < *n; i++ {
		name := fmt.Sprintf("site-%d", i+1)
		input := filepath.Join(*data, name)
		reg := pneumonia.Registry(pneumonia.Config{JobDir: pos[0], Key: k, Input: input, Output: loc.Output, Logf: func(format string, a ...any) { logf(name+": "+format, a...) },
			TBLogs: srv.TBLogs, Site: name})
		tasks, err := clientTasks(job.Client, reg)
		if err != nil {
			return err
		}
		for t, ex := range tasks {
			if simulateObserver != nil {
				ex = simulateObserver(name, ex)
			}
			tasks[t] = watchedExecutor{site: name, ex: ex, failures: failures}
		}
		cl := &client.Client{Name: name, Target: lis.Addr().String(), Wire: wire20.Wire{}, Tasks: tasks, Heartbeat: 30 * time.Second, GiveUp: 30 * time.Second}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			clientErrs[i] = cl.Run(ctx)
		}(i)
	}
	srvErr := srv.Serve(ctx, lis)
	wg.Wait()
	if srvErr != nil {
		return srvErr
	}
	if err := errors.Join(clientErrs...); err != nil {
		return err
	}
	if lost := failures.sites(); len(lost) > 0 {
		return fmt.Errorf("the run lost %d of %d site(s): %s", len(lost), *n, strings.Join(lost, "; "))
	}
	fmt.Fprintf(c.stderr, "simulation done in %.1f s\n", time.Since(start).Seconds())
	return nil
}

// siteFailures records each simulated site's first failed task, so that a
// run that went on without a site says so and exits non-zero. It watches
// the executors rather than asking the in-process server's LostSites:
// the server counts only failures that arrive while their round is open
// (with wait_time_after_min_received=0 a site that fails after the others
// closed the round would go unreported), it counts the sites handed a
// task rather than the -n simulated, and its wording differs from the
// one simulate reports ("task train failed: REASON").
type siteFailures struct {
	mu    sync.Mutex
	first map[string]string
	order []string
}

func (f *siteFailures) add(site, why string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.first == nil {
		f.first = map[string]string{}
	}
	if _, seen := f.first[site]; !seen {
		f.first[site] = why
		f.order = append(f.order, site)
	}
}

func (f *siteFailures) sites() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, s := range f.order {
		out = append(out, s+": "+f.first[s])
	}
	return out
}

// watchedExecutor reports its site's failed tasks to failures; a task
// stopped because the run ended or was interrupted is no failure.
type watchedExecutor struct {
	site     string
	ex       flare.Executor
	failures *siteFailures
}

func (w watchedExecutor) Execute(ctx context.Context, task string, data *flare.Shareable, fl *flare.FLContext) (*flare.Shareable, error) {
	r, err := w.ex.Execute(ctx, task, data, fl)
	switch {
	case ctx.Err() != nil:
	case err != nil:
		w.failures.add(w.site, fmt.Sprintf("task %s failed: %v", task, err))
	case r != nil && r.ReturnCode() != flare.RCOK:
		w.failures.add(w.site, fmt.Sprintf("task %s failed with %s", task, r.ReturnCode()))
	}
	return r, err
}

// simulateObserver, set by tests, wraps each simulated site's executors
// to see the tasks and results that cross the wire.
var simulateObserver func(site string, ex flare.Executor) flare.Executor

// clientTasks builds the executors config_fed_client.json names.
// wrapExecutor, set only in test builds (build tag recordresults),
// wraps a site's executors.
var wrapExecutor func(site, task string, ex flare.Executor) flare.Executor

func clientTasks(cfg *flare.ClientConfig, reg *flare.Registry) (map[string]flare.Executor, error) {
	tasks := map[string]flare.Executor{}
	for _, e := range cfg.Executors {
		ex, err := reg.Executor(e.Executor)
		if err != nil {
			return nil, err
		}
		for _, t := range e.Tasks {
			tasks[t] = ex
		}
	}
	return tasks, nil
}

// nvflareFlags parses the flags NVFlare's server_train / client_train take:
// -m WORKSPACE -s fed_*.json --set k=v ..., plus --job (the app folder,
// which NVFlare's admin would deploy) and --key-file.
func (c *command) nvflareFlags(name string, args []string, loc *fcp.Locations, more func(*flag.FlagSet)) (kit *flare.StartupKit, sets map[string]string, job string, key *persistor.Key, err error) {
	fs := c.flags(name, "-m WORKSPACE -s fed_"+name+".json [--set secure_train=true|false uid=SITE ...] --job APP_DIR")
	if more != nil {
		more(fs)
	}
	fs.StringVar(&loc.Input, "input", loc.Input, "FCP input directory (the site's data and key)")
	fs.StringVar(&loc.Output, "output", loc.Output, "FCP output directory")
	fs.StringVar(&loc.TBLogs, "tb-logs", loc.TBLogs, tbLogsUsage)
	ws := fs.String("m", ".", "workspace (the startup kit is WORKSPACE/startup/FILE)")
	file := fs.String("s", "fed_"+name+".json", "startup kit file")
	fs.StringVar(&job, "job", "", "the app folder (config/ and custom/) to run once; without it the "+name+" waits for the admin console to deploy apps (on an NVFlare 2.4+ server kit: for jobs submitted with NVFlare's admin tools or flarego admin --kit)")
	keyFile := fs.String("key-file", "", "key file (default: the FCP secret_run_params.json)")
	var setList stringList
	fs.Var(&setList, "set", "key=value (secure_train, uid, config_folder; others are workflow arguments)")
	rest, err := parse(fs, args, 0, -1)
	if err != nil {
		return nil, nil, "", nil, err
	}
	loc.Key = *keyFile
	// NVFlare puts the --set pairs after the flag as separate words.
	setList = append(setList, rest...)
	if sets, err = flare.ParseSets(setList); err != nil {
		return nil, nil, "", nil, fmt.Errorf("%w: %v", errUsage, err)
	}
	path := *file
	if !filepath.IsAbs(path) {
		path = filepath.Join(*ws, "startup", path)
	}
	if kit, err = flare.LoadStartupKit(path); err != nil {
		return nil, nil, "", nil, err
	}
	if kit.CellNet() && *keyFile == "" {
		// An NVFlare 2.4+ site or server may run jobs that need no key
		// (the hello-numpy examples); a job that does asks for it then.
		k, kerr := loc.KeyFile()
		if kerr != nil {
			return kit, sets, job, nil, nil
		}
		return kit, sets, job, k, nil
	}
	if *keyFile != "" {
		key, err = persistor.ReadKeyFile(*keyFile)
	} else {
		key, err = loc.KeyFile()
	}
	return kit, sets, job, key, err
}

// server runs the FL server from a startup kit (NVFlare's server_train):
// with --job, that app once; without, apps the admin console deploys.
// The admin console listens on the kit's admin_port.
func (c *command) server(args []string) error {
	loc := fcp.Default()
	var fresh bool
	kit, sets, jobDir, k, err := c.nvflareFlags("server", args, &loc, func(fs *flag.FlagSet) {
		fs.BoolVar(&fresh, "fresh", false, "with --job: start from round 1 even when the output folder holds the global model of an unfinished run of the same job (by default a restarted server goes on from it)")
	})
	if err != nil {
		return err
	}
	resume := ""
	if jobDir != "" && !fresh {
		if resume, err = jobFingerprint(jobDir, sets); err != nil {
			return err
		}
	}
	recipients, err := loc.Recipients()
	if err != nil {
		return err
	}
	// What the server needs is checked before it listens: the kit's kind,
	// the --set keys, the admin port, the job, the TLS files.
	if err := kit.CheckServer(); err != nil {
		return err
	}
	if kit.CellNet() {
		if jobDir != "" {
			// The job's global models go there: a missing or read-only
			// folder fails now, not after the first round.
			if err := checkOutputDir(loc.Output); err != nil {
				return err
			}
		}
		return c.cellnetServer(kit, sets, jobDir, k, loc, resume)
	}
	wf, err := flare.ServerSets(sets)
	if err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	adminPort := kit.Servers[0].AdminPort
	if adminPort <= 0 && jobDir == "" {
		return fmt.Errorf("%w: without --job the server needs an admin_port in %s to be told what to run", errUsage, kit.Path)
	}
	if err := checkOutputDir(loc.Output); err != nil {
		return err
	}
	logf := func(format string, a ...any) { fmt.Fprintf(c.stderr, format+"\n", a...) }
	// build makes the server side of an app folder.
	build := func(dir string) (*flare.ServerConfig, *flare.Registry, error) {
		job, err := flare.LoadJob(dir)
		if err != nil {
			return nil, nil, err
		}
		if job.Server == nil {
			return nil, nil, fmt.Errorf("%s: no config/config_fed_server.json", dir)
		}
		if err := job.Server.SetWorkflowArgs(wf); err != nil {
			return nil, nil, fmt.Errorf("%w: %v", errUsage, err)
		}
		return job.Server, pneumonia.Registry(pneumonia.Config{JobDir: dir, Key: k, Recipients: recipients, Input: loc.Input, Output: loc.Output, Logf: logf}), nil
	}
	var srv *server.Server
	if jobDir != "" {
		cfg, reg, err := build(jobDir)
		if err != nil {
			return err
		}
		if srv, err = server.New(cfg, reg); err != nil {
			return err
		}
		srv.OutputDir, srv.Resume = loc.Output, resume
		// Clients that poll the admin channel (NVFlare's, or ours without
		// --job) get the app deployed and started, as NVFlare's admin
		// deploy_app and start_app do.
		if err := srv.ServeAppTo(jobDir, filepath.Base(filepath.Clean(jobDir))); err != nil {
			return err
		}
	} else {
		srv = server.NewAdmin()
		if hb := kit.Servers[0].HeartBeatTimeout; hb > 0 {
			srv.HeartBeatTimeout = time.Duration(hb * float64(time.Second))
		}
	}
	srv.Logf, srv.Project, srv.TBLogs = logf, kit.Project(), loc.TensorBoardDir()
	wire := wire20.ServerWire{}
	secure := sets["secure_train"] == "true"
	if secure {
		cfg, err := kit.ServerTLS()
		if err != nil {
			return fmt.Errorf("%s: %w", kit.Path, err)
		}
		wire.TLS = cfg
	}
	srv.Wire = wire
	var console *hci.Server
	if adminPort > 0 {
		console = srv.Console(filepath.Dir(kit.Dir), build)
		if secure {
			if console.TLS, err = kit.ServerTLS(); err != nil {
				return fmt.Errorf("%s: %w", kit.Path, err)
			}
		} else {
			// NVFlare's POC user; secure mode admits certificates only.
			h, err := hci.HashPassword("admin")
			if err != nil {
				return err
			}
			console.Users = map[string]string{"admin": h}
		}
	}
	lis, err := net.Listen("tcp", kit.Target())
	if err != nil {
		return fmt.Errorf("%s: servers[0].service.target %s: %w", kit.Path, kit.Target(), err)
	}
	if console != nil {
		host := kit.Servers[0].AdminHost
		if host == "" {
			host = "localhost"
		}
		addr := net.JoinHostPort(host, strconv.Itoa(adminPort))
		alis, err := net.Listen("tcp", addr)
		if err != nil {
			lis.Close()
			return fmt.Errorf("%s: admin console on %s (admin_host, admin_port): %w", kit.Path, addr, err)
		}
		logf("server: admin console on %s (%s)", alis.Addr(), map[bool]string{true: "client certificates", false: "POC login admin/admin"}[secure])
		go console.Serve(alis)
		defer console.Close()
	}
	logf("server: listening on %s (secure_train=%v)", lis.Addr(), secure)
	ctx, stop := interruptible()
	defer stop()
	if err := srv.Serve(ctx, lis); err != nil {
		return err
	}
	// One job: a run that went on without a site did not do what was asked.
	if lost, sites := srv.LostSites(); jobDir != "" && len(lost) > 0 {
		return fmt.Errorf("the run lost %d of %d site(s): %s", len(lost), sites, strings.Join(lost, "; "))
	}
	return nil
}

// client runs a site from a startup kit (NVFlare's client_train).
func (c *command) client(args []string) error {
	loc := fcp.Default()
	kit, sets, jobDir, k, err := c.nvflareFlags("client", args, &loc, nil)
	if err != nil {
		return err
	}
	if err := kit.CheckClient(); err != nil {
		return err
	}
	if err := flare.CheckClientSets(sets); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	name := sets["uid"]
	if name == "" {
		return fmt.Errorf("%w: --set uid=SITE_NAME is required", errUsage)
	}
	logf := func(format string, a ...any) { fmt.Fprintf(c.stderr, name+": "+format+"\n", a...) }
	tasksFor := func(dir string) (map[string]flare.Executor, error) {
		job, err := flare.LoadJob(dir)
		if err != nil {
			return nil, err
		}
		if job.Client == nil {
			return nil, fmt.Errorf("%s: no config/config_fed_client.json", dir)
		}
		reg := pneumonia.Registry(pneumonia.Config{JobDir: dir, Key: k, Input: loc.Input, Output: loc.Output, Logf: logf, TBLogs: loc.TensorBoardDir(), Site: name})
		np.Register(reg)
		tasks, err := clientTasks(job.Client, reg)
		if err == nil && wrapExecutor != nil {
			for name, ex := range tasks {
				tasks[name] = wrapExecutor(sets["uid"], name, ex)
			}
		}
		return tasks, err
	}
	if kit.CellNet() {
		if jobDir != "" {
			return fmt.Errorf("%w: --job is for NVFlare 2.0 kits; an NVFlare 2.4+ server deploys the job itself", errUsage)
		}
		st := &site.Site{Name: name, Kit: kit, Workspace: filepath.Dir(kit.Dir), Tasks: tasksFor, Logf: logf,
			Secure: sets["secure_train"] == "true", Started: processStart}
		if kit.Client.RetryTimeout > 0 {
			st.GiveUp = time.Duration(kit.Client.RetryTimeout * float64(time.Second))
		}
		ctx, stop := interruptible()
		defer stop()
		return st.Run(ctx)
	}
	wire := wire20.Wire{Gzip: strings.EqualFold(kit.Client.Compression, "gzip")}
	cl := &client.Client{Name: name, Target: kit.Target(), Project: kit.Project(), Logf: logf}
	if kit.Client.RetryTimeout > 0 {
		cl.GiveUp = time.Duration(kit.Client.RetryTimeout * float64(time.Second))
	}
	if sets["secure_train"] == "true" {
		cfg, err := kit.ClientTLSConfig()
		if err != nil {
			return fmt.Errorf("%s: %w", kit.Path, err)
		}
		wire.TLS = cfg
	}
	cl.Wire = wire
	ctx, stop := interruptible()
	defer stop()
	if jobDir == "" {
		ws := filepath.Dir(kit.Dir) // WORKSPACE (the kit is in WORKSPACE/startup)
		return cl.RunAdmin(ctx, client.AdminHandler{Workspace: ws, Start: tasksFor})
	}
	if cl.Tasks, err = tasksFor(jobDir); err != nil {
		return err
	}
	return cl.Run(ctx)
}

func mustDER(certPEM []byte) []byte {
	b, _ := pem.Decode(certPEM)
	if b == nil {
		return nil
	}
	return b.Bytes
}
