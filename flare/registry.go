package flare

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/flarego/flarego/persistor"
)

// ErrNotImplemented reports an NVFlare component path flarego has no Go
// implementation for.
var ErrNotImplemented = errors.New("component not implemented in flarego")

// NVFlare component paths flarego implements itself.
const (
	PathScatterAndGather   = "nvflare.app_common.workflows.scatter_and_gather.ScatterAndGather"
	PathFedAvg             = "nvflare.app_common.workflows.fedavg.FedAvg"
	PathFullModelGenerator = "nvflare.app_common.shareablegenerators.full_model_shareable_generator.FullModelShareableGenerator"
	PathWeightedAggregator = "nvflare.app_common.aggregators.intime_accumulate_model_aggregator.InTimeAccumulateWeightedAggregator"
	PathCrossSiteModelEval = "nvflare.app_common.workflows.cross_site_model_eval.CrossSiteModelEval"
	// PathPTFileModelLocator, as CrossSiteModelEval's model_locator,
	// adds the run's final global model to the models every site scores.
	PathPTFileModelLocator = "nvflare.app_common.pt.pt_file_model_locator.PTFileModelLocator"
)

// An Executor runs a client task, like NVFlare's Executor.execute.
//
// Execute gets the task's name, its Shareable (a DXO for train and
// validate) and the server's FLContext (nil if the server sent none), and
// returns the result Shareable. The client runtime sets the result's
// task id, task name and cookie jar, and its return code to OK unless the
// executor set one (e.g. RCBadTaskData for data it cannot use). A returned
// error becomes an EXECUTION_EXCEPTION result whose task_error header
// carries the error's text (escaped, at most 1 KiB): the text must hold no
// secret. ctx is cancelled when the server aborts the task (the result is
// then TASK_ABORTED, whatever Execute returns) or the client stops;
// Execute should return soon after. It never runs twice at once on one
// client.
type Executor interface {
	Execute(ctx context.Context, task string, data *Shareable, fl *FLContext) (*Shareable, error)
}

// A ModelPersistor loads the initial global model and saves each new one
// (persistor.SecuredPersistor is one).
//
// Load is called once, before the first round; an error stops the run
// before any client gets a task. Save is called after each round with
// the new global model, from the workflow's one goroutine; an error stops the run, and the
// previous model must then still be whole where it was (write atomically).
// Neither gets a context: they are expected to take as long as the disk
// does, not to wait on a peer.
type ModelPersistor interface {
	Load() (*persistor.Checkpoint, error)
	Save(*persistor.Checkpoint) error
}

// A ResumablePersistor can also read back the last global model it saved,
// which may have been saved by an earlier process: a one-job server that
// was restarted goes on from it (server.Server.Resume). Last returns nil,
// "" and no error when nothing was saved yet, and says where the model
// is otherwise.
type ResumablePersistor interface {
	ModelPersistor
	Last() (ck *persistor.Checkpoint, where string, err error)
}

// Registry maps NVFlare component paths to Go constructors. The seed
// job's package (pneumonia) registers the trainer and the secured
// persistor (they need the model package, which flare does not import).
type Registry struct {
	Executors  map[string]func(args json.RawMessage) (Executor, error)
	Persistors map[string]func(args json.RawMessage) (ModelPersistor, error)
}

// Executor builds the executor a path names.
func (r *Registry) Executor(c Component) (Executor, error) {
	f, ok := r.Executors[c.Path]
	if !ok {
		return nil, fmt.Errorf("executor %q: %w", c.Path, ErrNotImplemented)
	}
	return f(c.Args)
}

// Persistor builds the persistor a path names.
func (r *Registry) Persistor(c Component) (ModelPersistor, error) {
	f, ok := r.Persistors[c.Path]
	if !ok {
		return nil, fmt.Errorf("persistor %q: %w", c.Path, ErrNotImplemented)
	}
	return f(c.Args)
}

// CheckServerComponents makes sure every component the server config names
// is one flarego implements.
func (r *Registry) CheckServerComponents(cfg *ServerConfig, sag *ScatterAndGatherArgs) (ModelPersistor, error) {
	if sag.FedAvg {
		// FedAvg aggregates and makes its tasks itself.
		p, err := cfg.Component(sag.PersistorID)
		if err != nil {
			return nil, err
		}
		return r.Persistor(p)
	}
	gen, err := cfg.Component(sag.ShareableGeneratorID)
	if err != nil {
		return nil, err
	}
	if gen.Path != PathFullModelGenerator {
		return nil, fmt.Errorf("shareable generator %q: %w", gen.Path, ErrNotImplemented)
	}
	agg, err := cfg.Component(sag.AggregatorID)
	if err != nil {
		return nil, err
	}
	if agg.Path != PathWeightedAggregator {
		return nil, fmt.Errorf("aggregator %q: %w", agg.Path, ErrNotImplemented)
	}
	var aa AggregatorArgs
	if len(agg.Args) > 0 {
		if err := json.Unmarshal(agg.Args, &aa); err != nil {
			return nil, fmt.Errorf("aggregator args: %w", err)
		}
	}
	if aa.ExpectedDataKind != "" && aa.ExpectedDataKind != KindWeights {
		return nil, fmt.Errorf("aggregator expected_data_kind %q: only WEIGHTS is implemented", aa.ExpectedDataKind)
	}
	p, err := cfg.Component(sag.PersistorID)
	if err != nil {
		return nil, err
	}
	return r.Persistor(p)
}
