package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
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
// ScatterAndGather workflow's arguments (e.g. wait_time_after_min_received=0).
func applySets(cfg *flare.ServerConfig, sets []string) error {
	for i, w := range cfg.Workflows {
		args := map[string]any{}
		if len(w.Args) > 0 {
			if err := json.Unmarshal(w.Args, &args); err != nil {
				return err
			}
		}
		for _, s := range sets {
			k, v, ok := strings.Cut(s, "=")
			if !ok {
				return fmt.Errorf("%w: --set %q is not key=value", errUsage, s)
			}
			if _, known := args[k]; !known {
				continue
			}
			if f, err := strconv.ParseFloat(v, 64); err == nil {
				args[k] = f
			} else {
				args[k] = v
			}
		}
		b, _ := json.Marshal(args)
		cfg.Workflows[i].Args = b
	}
	return nil
}

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// simulate runs the job's server and N clients in this process over
// loopback gRPC, like `nvflare simulator`; site i reads DATA/site-i.
func (c *command) simulate(args []string) error {
	fs := c.flags("simulate", "JOB_DIR -n N [--data DIR] [--key-file K] [--set key=value ...]")
	n := fs.Int("n", 2, "number of clients")
	data := fs.String("data", "", "folder holding one FCP input root per site: DATA/site-1, DATA/site-2, ... (default: the FCP input folder)")
	workspace := fs.String("w", "", "workspace (unused; for NVFlare's simulator flags)")
	keyFile := fs.String("key-file", "", "key for the encrypted spec and the global model (default: the FCP secret_run_params.json)")
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
	loc := persistor.DefaultLocations()
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
	for i := 0; i < *n; i++ {
		name := fmt.Sprintf("site-%d", i+1)
		input := filepath.Join(*data, name)
		reg := registry(pos[0], k, input, loc.Output, func(format string, a ...any) { logf(name+": "+format, a...) })
		tasks, err := clientTasks(job.Client, reg)
		if err != nil {
			return err
		}
		if simulateObserver != nil {
			for t, ex := range tasks {
				tasks[t] = simulateObserver(name, ex)
			}
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
	fmt.Fprintf(c.stderr, "simulation done in %.1f s\n", time.Since(start).Seconds())
	return nil
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
	var wf []string
	for k, v := range sets {
		wf = append(wf, k+"="+v)
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
			return err
		}
		srv.ServerOptions = append(srv.ServerOptions, opt)
	}
	lis, err := net.Listen("tcp", kit.Target())
	if err != nil {
		return err
	}
	logf("server: listening on %s (secure_train=%v)", lis.Addr(), secure)
	if port := kit.Servers[0].AdminPort; port > 0 {
		console := srv.Console(filepath.Dir(kit.Dir), build)
		if secure {
			if console.TLS, err = kit.AdminTLS(); err != nil {
				return err
			}
		} else {
			// NVFlare's POC user; secure mode admits certificates only.
			h, err := hci.HashPassword("admin")
			if err != nil {
				return err
			}
			console.Users = map[string]string{"admin": h}
		}
		host := kit.Servers[0].AdminHost
		if host == "" {
			host = "localhost"
		}
		alis, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			return fmt.Errorf("admin console: %w", err)
		}
		logf("server: admin console on %s (%s)", alis.Addr(), map[bool]string{true: "client certificates", false: "POC login admin/admin"}[secure])
		go console.Serve(alis)
		defer console.Close()
	} else if jobDir == "" {
		return fmt.Errorf("%w: without --job the server needs an admin_port in %s to be told what to run", errUsage, filepath.Join(kit.Dir, "fed_server.json"))
	}
	ctx, stop := interruptible()
	defer stop()
	return srv.Serve(ctx, lis)
}

// client runs a site from a startup kit (NVFlare's client_train).
func (c *command) client(args []string) error {
	loc := persistor.DefaultLocations()
	kit, sets, jobDir, k, err := c.nvflareFlags("client", args, &loc)
	if err != nil {
		return err
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
			return err
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
