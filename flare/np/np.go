// Package np is flarego's NPTrainer: NVFlare's
// nvflare.app_common.np.np_trainer.NPTrainer, the executor of the
// hello-numpy examples. Its train task adds delta to the DXO's
// "numpy_key" array and returns it as WEIGHTS with NUM_STEPS_CURRENT_ROUND
// 1; its submit_model task returns the last model it trained.
package np

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"sync"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/persistor"
	"github.com/flarego/flarego/persistor/pickle"
)

// Path is NPTrainer's component path.
const Path = "nvflare.app_common.np.np_trainer.NPTrainer"

// Key is the DXO entry NPTrainer trains.
const Key = "numpy_key"

// Args are NPTrainer's arguments, with NVFlare's defaults.
type Args struct {
	Delta               float64 `json:"delta"`
	SleepTime           float64 `json:"sleep_time"`
	TrainTaskName       string  `json:"train_task_name"`
	SubmitModelTaskName string  `json:"submit_model_task_name"`
}

// Trainer is an NPTrainer.
type Trainer struct {
	Args
	mu   sync.Mutex
	last *persistor.Tensor
}

// New builds a Trainer from the component's args.
func New(raw json.RawMessage) (flare.Executor, error) {
	a := Args{Delta: 1, TrainTaskName: "train", SubmitModelTaskName: "submit_model"}
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &a); err != nil {
			return nil, fmt.Errorf("%s args: %w", Path, err)
		}
	}
	if math.IsNaN(a.Delta) || math.IsInf(a.Delta, 0) {
		return nil, fmt.Errorf("%s args: delta must be a finite number", Path)
	}
	return &Trainer{Args: a}, nil
}

// Register adds NPTrainer to r.
func Register(r *flare.Registry) {
	if r.Executors == nil {
		r.Executors = map[string]func(json.RawMessage) (flare.Executor, error){}
	}
	r.Executors[Path] = New
}

func badData(why string) (*flare.Shareable, error) {
	r := flare.NewShareable()
	r.SetHeader(flare.HeaderRC, flare.RCBadTaskData)
	r.SetHeader(flare.HeaderTaskError, why)
	return r, nil
}

// Execute runs train or submit_model.
func (t *Trainer) Execute(ctx context.Context, task string, data *flare.Shareable, fl *flare.FLContext) (*flare.Shareable, error) {
	switch task {
	case t.TrainTaskName:
		if data == nil || data.DXO == nil || data.DXO.Kind != flare.KindWeights {
			return badData("the task carries no WEIGHTS DXO")
		}
		in := data.DXO.Get(Key)
		if in == nil {
			return badData("numpy_key not found in model")
		}
		out, err := addDelta(in, t.Delta)
		if err != nil {
			return badData(err.Error())
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		t.mu.Lock()
		t.last = out
		t.mu.Unlock()
		meta := &pickle.Dict{}
		meta.Set(flare.MetaNumStepsCurrentRound, int64(1))
		r := flare.NewShareable()
		r.DXO = &flare.DXO{Kind: flare.KindWeights, Data: []flare.NamedArray{{Name: Key, Array: out}}, Meta: meta}
		return r, nil
	case t.SubmitModelTaskName:
		t.mu.Lock()
		last := t.last
		t.mu.Unlock()
		r := flare.NewShareable()
		if last == nil {
			r.SetHeader(flare.HeaderRC, flare.RCExecutionException)
			r.SetHeader(flare.HeaderTaskError, "no model trained yet")
			return r, nil
		}
		r.DXO = &flare.DXO{Kind: flare.KindWeights, Data: []flare.NamedArray{{Name: Key, Array: last}}, Meta: &pickle.Dict{}}
		return r, nil
	}
	r := flare.NewShareable()
	r.SetHeader(flare.HeaderRC, flare.RCTaskUnknown)
	return r, nil
}

// addDelta returns a copy of in with delta added to every element, in
// its own dtype (numpy's in-place +=: an integer array stays integer).
func addDelta(in *persistor.Tensor, delta float64) (*persistor.Tensor, error) {
	out, err := persistor.NewTensor(in.DType, in.Shape...)
	if err != nil {
		return nil, err
	}
	n := in.NumElements()
	if len(in.Data) != n*in.DType.Size() {
		return nil, fmt.Errorf("numpy_key: %d bytes for %d elements of %s", len(in.Data), n, in.DType)
	}
	le := binary.LittleEndian
	for i := 0; i < n; i++ {
		switch in.DType {
		case persistor.Float32:
			le.PutUint32(out.Data[4*i:], math.Float32bits(math.Float32frombits(le.Uint32(in.Data[4*i:]))+float32(delta)))
		case persistor.Float64:
			le.PutUint64(out.Data[8*i:], math.Float64bits(math.Float64frombits(le.Uint64(in.Data[8*i:]))+delta))
		case persistor.Int64:
			le.PutUint64(out.Data[8*i:], uint64(int64(le.Uint64(in.Data[8*i:]))+int64(delta)))
		case persistor.Int32:
			le.PutUint32(out.Data[4*i:], uint32(int32(le.Uint32(in.Data[4*i:]))+int32(delta)))
		default:
			return nil, fmt.Errorf("numpy_key: dtype %s not supported", in.DType)
		}
	}
	return out, nil
}
