// Package pneumonia is the seed job's Go side: the components its NVFlare
// configs name, where the model and the persistor meet.
//
// Entry points: [Registry] maps the job's component paths ([PathTrainer],
// [PathPersistor]) to Go constructors for one site (its FCP input and
// output roots, the run's key); the trainer it builds runs the train,
// validate and submit_model tasks; [JobSpec] finds and decrypts, in memory,
// the architecture an NVFlare model path names; [TrainerArgs] and
// [PersistorArgs] are the components' arguments with the defaults a job
// config may leave out.
//
// Promise: the trainer never returns weights that are not finite, answers
// task data that does not fit the model with BAD_TASK_DATA rather than an
// error, and scores a model (validate) in evaluation mode with the
// deterministic transforms; the architecture is read only from the job's
// custom/ folder and is decrypted in memory only. The package imports
// flare, model, persistor and fcp, never a runtime or a wire.
package pneumonia

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"filippo.io/age"
	"github.com/flarego/flarego/fcp"
	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/model"
	"github.com/flarego/flarego/persistor"
	"github.com/flarego/flarego/persistor/pickle"
)

// NVFlare component paths of the seed job whose Go implementations live
// here.
const (
	PathTrainer   = "pneumonia_trainer.PneumoniaTrainer"
	PathPersistor = "pt_secured_model_persistor.PTSecuredModelPersistor"
)

// DefaultModelPath is the model both components use when the job names
// none: custom/network.json.enc holding "PneumoniaModel".
const DefaultModelPath = "network.PneumoniaModel"

// Metric names of the validate task's METRICS DXO (NVFlare's examples
// report val_acc).
const (
	MetricAccuracy = "val_acc"
	MetricLoss     = "val_loss"
	MetricImages   = "val_images"
)

// JobSpec finds the architecture an NVFlare model path names
// ("network.PneumoniaModel" → custom/network.json.enc or .json) and
// decrypts it in memory.
func JobSpec(jobDir, modelPath string, k *persistor.Key) (*model.Spec, error) {
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

// TrainerArgs are PneumoniaTrainer's arguments in config_fed_client.json.
type TrainerArgs struct {
	LR     float64 `json:"lr"`
	Epochs int     `json:"epochs"`
	Batch  int     `json:"batch_size"`
	Model  string  `json:"model"`
}

// DefaultTrainerArgs are the trainer's arguments where the job config
// leaves them out: the seed's lr 0.01, 5 epochs, batches of 4.
func DefaultTrainerArgs() TrainerArgs {
	return TrainerArgs{LR: 0.01, Epochs: 5, Batch: 4, Model: DefaultModelPath}
}

// ParseTrainerArgs reads the trainer's arguments over the defaults and
// checks them as training would.
func ParseTrainerArgs(raw json.RawMessage) (TrainerArgs, error) {
	args := DefaultTrainerArgs()
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &args); err != nil {
			return args, fmt.Errorf("%s args: %w", PathTrainer, err)
		}
	}
	if err := (model.TrainConfig{Epochs: args.Epochs, LR: args.LR, Batch: args.Batch}).Check(); err != nil {
		return args, fmt.Errorf("%s args (lr, epochs, batch_size): %w", PathTrainer, err)
	}
	return args, nil
}

// withRunParams lets FCP's run parameters (input/run_params.json) override
// the job config's epochs, lr and batch_size, logging what changed.
func withRunParams(args TrainerArgs, input string, logf func(string, ...any)) (TrainerArgs, error) {
	if input == "" {
		return args, nil
	}
	rp, err := (fcp.Locations{Input: input}).RunParams()
	if err != nil || rp.Path == "" {
		return args, err
	}
	job := args
	if rp.Epochs != nil {
		args.Epochs = *rp.Epochs
	}
	if rp.LR != nil {
		args.LR = *rp.LR
	}
	if rp.Batch != nil {
		args.Batch = *rp.Batch
	}
	logf("run parameters: %s; the trainer runs epochs=%d lr=%g batch_size=%d (job config: epochs=%d lr=%g batch_size=%d)",
		rp, args.Epochs, args.LR, args.Batch, job.Epochs, job.LR, job.Batch)
	return args, nil
}

// PersistorArgs are PTSecuredModelPersistor's arguments in
// config_fed_server.json.
type PersistorArgs struct {
	Model struct {
		Path string `json:"path"`
	} `json:"model"`
	File    string `json:"global_model_file_name"`
	Preload string `json:"ckpt_preload_path"`
	// Recipients are model owners' age recipients (age1…): the global and
	// best models are encrypted to them, not with the job's key.
	Recipients []string `json:"recipients"`
}

// ParsePersistorArgs reads the persistor's arguments (a JSON object is
// required): the global model goes to fcp.DefaultGlobalModel and the model
// is DefaultModelPath unless the job says otherwise.
func ParsePersistorArgs(raw json.RawMessage) (PersistorArgs, error) {
	args := PersistorArgs{File: fcp.DefaultGlobalModel}
	if err := json.Unmarshal(raw, &args); err != nil {
		return args, fmt.Errorf("%s args: %w", PathPersistor, err)
	}
	if args.Model.Path == "" {
		args.Model.Path = DefaultModelPath
	}
	return args, nil
}

// Config is one site's side of the job, for Registry.
type Config struct {
	JobDir string         // the app folder: config/ and custom/ (the specs)
	Key    *persistor.Key // decrypts the specs; encrypts the global model
	// Recipients (from the server's credentials) replace Key for the
	// models the persistor saves, with those of the persistor's arguments.
	Recipients []age.Recipient
	Input      string // the site's FCP input root: the trainer's images
	Output     string // the FCP output root the persistor's "/output/..." moves to
	Logf       func(format string, a ...any)
	// TBLogs, when set, is the TensorBoard folder: the trainer writes its
	// curves into TBLogs/Site (see curves.go).
	TBLogs string
	Site   string
}

// Registry builds the job's components: the trainer for a site whose
// input root is c.Input, the secured persistor writing under c.Output.
func Registry(c Config) *flare.Registry {
	logf := c.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	return &flare.Registry{
		Executors: map[string]func(json.RawMessage) (flare.Executor, error){
			PathTrainer: func(raw json.RawMessage) (flare.Executor, error) {
				args, err := ParseTrainerArgs(raw)
				if err != nil {
					return nil, err
				}
				if args, err = withRunParams(args, c.Input, logf); err != nil {
					return nil, err
				}
				spec, err := JobSpec(c.JobDir, args.Model, c.Key)
				if err != nil {
					return nil, err
				}
				return &trainer{spec: spec, input: c.Input, lr: args.LR, epochs: args.Epochs, batch: args.Batch, logf: logf,
					curves: newCurves(c.TBLogs, c.Site, logf)}, nil
			},
		},
		Persistors: map[string]func(json.RawMessage) (flare.ModelPersistor, error){
			PathPersistor: func(raw json.RawMessage) (flare.ModelPersistor, error) {
				args, err := ParsePersistorArgs(raw)
				if err != nil {
					return nil, err
				}
				spec, err := JobSpec(c.JobDir, args.Model.Path, c.Key)
				if err != nil {
					return nil, err
				}
				path := (fcp.Locations{Output: c.Output}).OutputPath(args.File)
				recipients, err := persistor.ParseRecipients(PathPersistor+" args: recipients", args.Recipients)
				if err != nil {
					return nil, err
				}
				recipients = append(recipients, c.Recipients...)
				if len(recipients) > 0 {
					logf("persistor: models are encrypted to %d owner recipient(s) (age); this server cannot read them back", len(recipients))
				}
				return &persistor.SecuredPersistor{Path: path, Key: c.Key, Recipients: recipients, Preload: args.Preload, ModelName: spec.Name,
					Init: func() (*persistor.StateDict, error) { return model.Init(spec, uint64(time.Now().UnixNano())) }}, nil
			},
		},
	}
}

// trainer is pneumonia_trainer.PneumoniaTrainer: train, submit_model and
// validate (cross-site evaluation) on the site's input data.
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
	curves  *curves // TensorBoard event files, or nil
}

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
	round := t.curves.round(data)
	var final model.EpochStats
	steps, err := model.Train(ctx, net, samples, model.TrainConfig{Epochs: t.epochs, LR: t.lr, Batch: t.batch, Seed: uint64(time.Now().UnixNano()), Augment: true,
		Progress: func(s model.EpochStats) { t.logf("%s", s); t.curves.epoch(round, s); final = s },
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
	out.DXO = flare.WeightsDXO(sd, &pickle.Dict{Items: []pickle.Item{{Key: flare.MetaNumStepsCurrentRound, Value: int64(steps)},
		{Key: MetaTrainLoss, Value: final.Loss}, {Key: MetaTrainAccuracy, Value: final.Accuracy}}})
	return out, nil
}

func (t *trainer) localSamples() ([]model.Sample, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.samples == nil {
		root, err := (fcp.Locations{Input: t.input}).TrainingFolder()
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
// images (model.Evaluate) and replies a METRICS DXO: accuracy, mean
// cross-entropy, image count.
func (t *trainer) validate(ctx context.Context, net *model.Net, samples []model.Sample, owner string) (*flare.Shareable, error) {
	start := time.Now()
	ev, err := model.Evaluate(ctx, net, samples, t.batch, func(m string) { t.logf("warning: %s", m) })
	if err != nil {
		return nil, fmt.Errorf("validate: %w", err)
	}
	if owner == "" {
		owner = "an unnamed owner"
	}
	t.logf("validate: model of %s: accuracy %.1f%%, loss %.4f on %d images in %.1f s", owner, 100*ev.Accuracy, ev.Loss, ev.Images, time.Since(start).Seconds())
	t.curves.validation(owner, ev.Accuracy, ev.Loss)
	out := flare.NewShareable()
	out.DXO = flare.MetricsDXO(pickle.Item{Key: MetricAccuracy, Value: ev.Accuracy}, pickle.Item{Key: MetricLoss, Value: ev.Loss},
		pickle.Item{Key: MetricImages, Value: int64(ev.Images)})
	return out, nil
}
