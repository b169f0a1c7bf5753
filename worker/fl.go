package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/hci"
	"github.com/flarego/flarego/model"
	"github.com/flarego/flarego/persistor"
	"github.com/flarego/flarego/persistor/pickle"
)

// NVFlare component paths whose Go implementations live here, where the
// model and the persistor meet.
const (
	pathTrainer   = "pneumonia_trainer.PneumoniaTrainer"
	pathPersistor = "pt_secured_model_persistor.PTSecuredModelPersistor"
)

// jobSpec finds the architecture an NVFlare model path names
// ("network.PneumoniaModel" → custom/network.json.enc or .json) and
// decrypts it in memory.
func jobSpec(jobDir, modelPath string, k *persistor.Key) (*model.Spec, error) {
	module, class, ok := strings.Cut(modelPath, ".")
	if !ok || module == "" || class == "" || strings.ContainsAny(module, "/\\") {
		return nil, fmt.Errorf("model path %q is not module.Class", modelPath)
	}
	var spec *model.Spec
	var err error
	for _, name := range []string{module + ".json.enc", module + ".json"} {
		p := filepath.Join(jobDir, "custom", name)
		if _, statErr := os.Stat(p); statErr != nil {
			continue
		}
		if spec, err = model.LoadSpec(p, k); err != nil {
			return nil, err
		}
		break
	}
	if spec == nil {
		return nil, fmt.Errorf("model %s: no custom/%s.json.enc in %s", modelPath, module, jobDir)
	}
	if spec.Name != class {
		return nil, fmt.Errorf("model %s: custom/%s holds %q", modelPath, module, spec.Name)
	}
	return spec, nil
}

// trainer is pneumonia_trainer.PneumoniaTrainer: train, submit_model and
// validate (cross-site evaluation) on the site's /input data.
type trainer struct {
	spec    *model.Spec
	input   string
	lr      float64
	epochs  int
	batch   int
	logf    func(string, ...any)
	mu      sync.Mutex
	last    *persistor.StateDict
	samples []model.Sample
}

// Metric names of the validate task's METRICS DXO (NVFlare's examples
// report val_acc).
const (
	metricAccuracy = "val_acc"
	metricLoss     = "val_loss"
	metricImages   = "val_images"
)

func (t *trainer) Execute(ctx context.Context, task string, data *flare.Shareable, fl *flare.FLContext) (*flare.Shareable, error) {
	out := flare.NewShareable()
	switch task {
	case "submit_model":
		t.mu.Lock()
		defer t.mu.Unlock()
		if t.last == nil {
			t.logf("submit_model: no local model yet (this site has not trained in this run)")
			out.SetHeader(flare.HeaderRC, flare.RCExecutionException)
			return out, nil
		}
		out.DXO = flare.WeightsDXO(t.last, nil)
		return out, nil
	case "train", "validate":
	default:
		out.SetHeader(flare.HeaderRC, flare.RCTaskUnknown)
		return out, nil
	}
	if data.DXO == nil || data.DXO.Kind != flare.KindWeights {
		out.SetHeader(flare.HeaderRC, flare.RCBadTaskData)
		return out, nil
	}
	samples, err := t.localSamples()
	if err != nil {
		return nil, err
	}
	net, err := model.NewNet(t.spec, data.DXO.StateDict(), t.batch)
	if err != nil {
		t.logf("%s: the task's weights do not fit the model: %v", task, err)
		out.SetHeader(flare.HeaderRC, flare.RCBadTaskData)
		return out, nil
	}
	if task == "validate" {
		return t.validate(ctx, net, samples, data.HeaderString(flare.HeaderModelOwner))
	}
	steps, err := model.Train(ctx, net, samples, model.TrainConfig{Epochs: t.epochs, LR: t.lr, Batch: t.batch, Seed: uint64(time.Now().UnixNano()), Augment: true,
		Progress: func(s model.EpochStats) { t.logf("%s", s) },
		Warn:     func(m string) { t.logf("warning: %s", m) }})
	if err != nil {
		return nil, err
	}
	// Weights that diverged must not reach the server's average.
	if err := net.CheckFinite(); err != nil {
		return nil, fmt.Errorf("train: %w", err)
	}
	sd := net.StateDict()
	t.mu.Lock()
	t.last = sd
	t.mu.Unlock()
	out.DXO = flare.WeightsDXO(sd, &pickle.Dict{Items: []pickle.Item{{Key: flare.MetaNumStepsCurrentRound, Value: int64(steps)}}})
	return out, nil
}

func (t *trainer) localSamples() ([]model.Sample, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.samples == nil {
		root, err := model.TrainingFolder(t.input)
		if err != nil {
			return nil, err
		}
		if _, t.samples, err = model.ImageFolder(root); err != nil {
			return nil, err
		}
	}
	return t.samples, nil
}

// validate scores another site's (or the server's) model on this site's
// images, in evaluation mode with the deterministic transforms, and
// replies a METRICS DXO: accuracy, mean cross-entropy, image count.
func (t *trainer) validate(ctx context.Context, net *model.Net, samples []model.Sample, owner string) (*flare.Shareable, error) {
	start := time.Now()
	preds, err := model.Predict(ctx, net, samples, t.batch, func(m string) { t.logf("warning: %s", m) })
	if err != nil {
		return nil, err
	}
	if len(preds) == 0 {
		return nil, fmt.Errorf("validate: no readable images")
	}
	// The mean cross-entropy is the training loss's (model.CrossEntropy),
	// over all images at once.
	classes := len(preds[0].Logits)
	logits := make([]float32, 0, len(preds)*classes)
	labels := make([]int, len(preds))
	correct := 0
	for i, p := range preds {
		logits = append(logits, p.Logits...)
		labels[i] = p.Sample.Class
		best := 0
		for k, v := range p.Logits {
			if v > p.Logits[best] {
				best = k
			}
		}
		if best == p.Sample.Class {
			correct++
		}
	}
	loss, err := model.CrossEntropy(logits, labels, classes, make([]float32, len(logits)))
	if err != nil {
		return nil, fmt.Errorf("validate: %w", err)
	}
	acc := float64(correct) / float64(len(preds))
	if owner == "" {
		owner = "an unnamed owner"
	}
	t.logf("validate: model of %s: accuracy %.1f%%, loss %.4f on %d images in %.1f s", owner, 100*acc, loss, len(preds), time.Since(start).Seconds())
	out := flare.NewShareable()
	out.DXO = flare.MetricsDXO(pickle.Item{Key: metricAccuracy, Value: acc}, pickle.Item{Key: metricLoss, Value: loss},
		pickle.Item{Key: metricImages, Value: int64(len(preds))})
	return out, nil
}

// registry builds the job's components: the trainer for a site whose
// /input is input, the secured persistor writing under output.
func registry(jobDir string, key *persistor.Key, input, output string, logf func(string, ...any)) *flare.Registry {
	return &flare.Registry{
		Executors: map[string]func(json.RawMessage) (flare.Executor, error){
			pathTrainer: func(raw json.RawMessage) (flare.Executor, error) {
				args := struct {
					LR     float64 `json:"lr"`
					Epochs int     `json:"epochs"`
					Batch  int     `json:"batch_size"`
					Model  string  `json:"model"`
				}{LR: 0.01, Epochs: 5, Batch: 4, Model: "network.PneumoniaModel"}
				if len(raw) > 0 {
					if err := json.Unmarshal(raw, &args); err != nil {
						return nil, fmt.Errorf("%s args: %w", pathTrainer, err)
					}
				}
				if err := (model.TrainConfig{Epochs: args.Epochs, LR: args.LR, Batch: args.Batch}).Check(); err != nil {
					return nil, fmt.Errorf("%s args (lr, epochs, batch_size): %w", pathTrainer, err)
				}
				spec, err := jobSpec(jobDir, args.Model, key)
				if err != nil {
					return nil, err
				}
				return &trainer{spec: spec, input: input, lr: args.LR, epochs: args.Epochs, batch: args.Batch, logf: logf}, nil
			},
		},
		Persistors: map[string]func(json.RawMessage) (flare.ModelPersistor, error){
			pathPersistor: func(raw json.RawMessage) (flare.ModelPersistor, error) {
				args := struct {
					Model struct {
						Path string `json:"path"`
					} `json:"model"`
					File    string `json:"global_model_file_name"`
					Preload string `json:"ckpt_preload_path"`
				}{File: "/output/model_parameters.pt.enc"}
				if err := json.Unmarshal(raw, &args); err != nil {
					return nil, fmt.Errorf("%s args: %w", pathPersistor, err)
				}
				if args.Model.Path == "" {
					args.Model.Path = "network.PneumoniaModel"
				}
				spec, err := jobSpec(jobDir, args.Model.Path, key)
				if err != nil {
					return nil, err
				}
				path := args.File
				if rest, ok := strings.CutPrefix(path, "/output/"); ok {
					path = filepath.Join(output, rest)
				}
				return &persistor.SecuredPersistor{Path: path, Key: key, Preload: args.Preload, ModelName: spec.Name,
					Init: func() (*persistor.StateDict, error) { return model.Init(spec, uint64(time.Now().UnixNano())) }}, nil
			},
		},
	}
}

// applySets applies NVFlare-style --set key=value overrides to the
// workflows' arguments (e.g. wait_time_after_min_received=0); an unknown
// key is refused with the list of known ones.
func applySets(cfg *flare.ServerConfig, sets []string) error {
	for _, s := range sets {
		k, v, ok := strings.Cut(s, "=")
		if !ok {
			return fmt.Errorf("%w: --set %q is not key=value", errUsage, s)
		}
		if err := cfg.SetWorkflowArg(k, v); err != nil {
			return fmt.Errorf("%w: %v", errUsage, err)
		}
	}
	return nil
}

// checkSetKeys refuses --set keys that are neither one of the command's own
// (startup) keys nor a workflow argument, before anything starts.
func checkSetKeys(sets map[string]string, own ...string) error {
	for k := range sets {
		if !slices.Contains(own, k) && !slices.Contains(flare.WorkflowArgKeys(), k) {
			return fmt.Errorf("%w: --set %s: unknown key (known: %s; workflow arguments: %s)", errUsage, k,
				strings.Join(own, ", "), strings.Join(flare.WorkflowArgKeys(), ", "))
		}
	}
	return nil
}

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
	loc := persistor.DefaultLocations()
	fs.StringVar(&loc.Output, "output", loc.Output, "where the global model goes (the persistor's /output/...)")
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
	if err := applySets(job.Server, sets); err != nil {
		return err
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
		if _, err := model.TrainingFolder(filepath.Join(*data, fmt.Sprintf("site-%d", i))); err != nil {
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
	srv, err := flare.NewServer(job.Server, registry(pos[0], k, loc.Input, loc.Output, logf))
	if err != nil {
		return err
	}
	srv.Logf = func(format string, a ...any) { logf("server: "+format, a...) }
	srv.OutputDir = loc.Output
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
		reg := registry(pos[0], k, input, loc.Output, func(format string, a ...any) { logf(name+": "+format, a...) })
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
		cl := &flare.Client{Name: name, Target: lis.Addr().String(), Tasks: tasks, Heartbeat: 30 * time.Second, GiveUp: 30 * time.Second}
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
// run that went on without a site says so and exits non-zero.
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
func (c *command) nvflareFlags(name string, args []string, loc *persistor.Locations) (kit *flare.StartupKit, sets map[string]string, job string, key *persistor.Key, err error) {
	fs := c.flags(name, "-m WORKSPACE -s fed_"+name+".json [--set secure_train=true|false uid=SITE ...] --job APP_DIR")
	fs.StringVar(&loc.Input, "input", loc.Input, "FCP input directory (the site's data and key)")
	fs.StringVar(&loc.Output, "output", loc.Output, "FCP output directory")
	ws := fs.String("m", ".", "workspace (the startup kit is WORKSPACE/startup/FILE)")
	file := fs.String("s", "fed_"+name+".json", "startup kit file")
	fs.StringVar(&job, "job", "", "the app folder (config/ and custom/) to run once; without it the "+name+" waits for the admin console to deploy apps")
	keyFile := fs.String("key-file", "", "key file (default: the FCP secret_run_params.json)")
	var setList stringList
	fs.Var(&setList, "set", "key=value (secure_train, uid, config_folder; others are workflow arguments)")
	rest, err := parse(fs, args, 0, -1)
	if err != nil {
		return nil, nil, "", nil, err
	}
	// NVFlare puts the --set pairs after the flag as separate words.
	setList = append(setList, rest...)
	sets = map[string]string{}
	for _, s := range setList {
		k, v, ok := strings.Cut(s, "=")
		if !ok {
			return nil, nil, "", nil, fmt.Errorf("%w: %q is not key=value", errUsage, s)
		}
		sets[k] = v
	}
	path := *file
	if !filepath.IsAbs(path) {
		path = filepath.Join(*ws, "startup", path)
	}
	if kit, err = flare.LoadStartupKit(path); err != nil {
		return nil, nil, "", nil, err
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
	loc := persistor.DefaultLocations()
	kit, sets, jobDir, k, err := c.nvflareFlags("server", args, &loc)
	if err != nil {
		return err
	}
	// What the server needs is checked before it listens: the kit's kind,
	// the --set keys, the admin port, the job, the TLS files.
	if err := kit.CheckServer(); err != nil {
		return err
	}
	serverKeys := []string{"secure_train", "config_folder"}
	if err := checkSetKeys(sets, serverKeys...); err != nil {
		return err
	}
	var wf []string
	for k, v := range sets {
		if !slices.Contains(serverKeys, k) {
			wf = append(wf, k+"="+v)
		}
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
		if err := applySets(job.Server, wf); err != nil {
			return nil, nil, err
		}
		return job.Server, registry(dir, k, loc.Input, loc.Output, logf), nil
	}
	var srv *flare.Server
	if jobDir != "" {
		cfg, reg, err := build(jobDir)
		if err != nil {
			return err
		}
		if srv, err = flare.NewServer(cfg, reg); err != nil {
			return err
		}
		srv.OutputDir = loc.Output
		// Clients that poll the admin channel (NVFlare's, or ours without
		// --job) get the app deployed and started, as NVFlare's admin
		// deploy_app and start_app do.
		if err := srv.ServeAppTo(jobDir, filepath.Base(filepath.Clean(jobDir))); err != nil {
			return err
		}
	} else {
		srv = flare.NewAdminServer()
		if hb := kit.Servers[0].HeartBeatTimeout; hb > 0 {
			srv.HeartBeatTimeout = time.Duration(hb * float64(time.Second))
		}
	}
	srv.Logf, srv.Project = logf, kit.Project()
	secure := sets["secure_train"] == "true"
	if secure {
		opt, err := kit.ServerCredentials()
		if err != nil {
			return fmt.Errorf("%s: %w", kit.Path, err)
		}
		srv.ServerOptions = append(srv.ServerOptions, opt)
	}
	var console *hci.Server
	if adminPort > 0 {
		console = srv.Console(filepath.Dir(kit.Dir), build)
		if secure {
			if console.TLS, err = kit.AdminTLS(); err != nil {
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
	loc := persistor.DefaultLocations()
	kit, sets, jobDir, k, err := c.nvflareFlags("client", args, &loc)
	if err != nil {
		return err
	}
	if err := kit.CheckClient(); err != nil {
		return err
	}
	for k := range sets {
		if known := []string{"uid", "secure_train", "config_folder"}; !slices.Contains(known, k) {
			return fmt.Errorf("%w: --set %s: unknown key for a client (known: %s)", errUsage, k, strings.Join(known, ", "))
		}
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
		return clientTasks(job.Client, registry(dir, k, loc.Input, loc.Output, logf))
	}
	cl := &flare.Client{Name: name, Target: kit.Target(), Project: kit.Project(), Logf: logf,
		Gzip: strings.EqualFold(kit.Client.Compression, "gzip")}
	if kit.Client.RetryTimeout > 0 {
		cl.GiveUp = time.Duration(kit.Client.RetryTimeout * float64(time.Second))
	}
	if sets["secure_train"] == "true" {
		opt, err := kit.ClientCredentials()
		if err != nil {
			return fmt.Errorf("%s: %w", kit.Path, err)
		}
		cl.DialOptions = []grpc.DialOption{opt}
	}
	ctx, stop := interruptible()
	defer stop()
	if jobDir == "" {
		ws := filepath.Dir(kit.Dir) // WORKSPACE (the kit is in WORKSPACE/startup)
		return cl.RunAdmin(ctx, flare.AdminHandler{Workspace: ws, Start: tasksFor})
	}
	if cl.Tasks, err = tasksFor(jobDir); err != nil {
		return err
	}
	return cl.Run(ctx)
}
