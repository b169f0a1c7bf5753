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
	PathFullModelGenerator = "nvflare.app_common.shareablegenerators.full_model_shareable_generator.FullModelShareableGenerator"
	PathWeightedAggregator = "nvflare.app_common.aggregators.intime_accumulate_model_aggregator.InTimeAccumulateWeightedAggregator"
	PathCrossSiteModelEval = "nvflare.app_common.workflows.cross_site_model_eval.CrossSiteModelEval"
	// PathPTFileModelLocator, as CrossSiteModelEval's model_locator,
	// adds the run's final global model to the models every site scores.
	PathPTFileModelLocator = "nvflare.app_common.pt.pt_file_model_locator.PTFileModelLocator"
)

// An Executor runs a client task, like NVFlare's Executor.execute.
type Executor interface {
	Execute(ctx context.Context, task string, data *Shareable, fl *FLContext) (*Shareable, error)
}

// A ModelPersistor loads the initial global model and saves each new one
// (persistor.SecuredPersistor is one).
type ModelPersistor interface {
	Load() (*persistor.Checkpoint, error)
	Save(*persistor.Checkpoint) error
}

// Registry maps NVFlare component paths to Go constructors. The worker
// registers the trainer and the persistor (they need the model package,
// which flare does not import).
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

// checkServerComponents makes sure every component the server config names
// is one flarego implements.
func (r *Registry) checkServerComponents(cfg *ServerConfig, sag *ScatterAndGatherArgs) (ModelPersistor, error) {
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
