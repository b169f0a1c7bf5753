package flare

import (
	"fmt"

	"github.com/flarego/flarego/persistor"
	"github.com/flarego/flarego/persistor/pickle"
)

// Return codes (Shareable header __rc__), as NVFlare 2.0 spells them.
const (
	RCOK                 = "OK"
	RCBadTaskData        = "BAD_TASK_DATA"
	RCTaskUnknown        = "TASK_UNKNOWN"
	RCExecutionException = "EXECUTION_EXCEPTION"
	RCTaskAborted        = "TASK_ABORTED"
)

// Header keys of a Shareable.
const (
	HeaderContentType  = "__content_type__"
	HeaderTaskID       = "__task_id__"
	HeaderTaskName     = "__task_name__"
	HeaderRC           = "__rc__"
	HeaderCookieJar    = "__cookie_jar__"
	HeaderWorkflow     = "__workflow__"
	HeaderWaitTime     = "__wait_time__"
	HeaderCurrentRound = "current_round"
	HeaderNumRounds    = "num_rounds"
	// HeaderModelOwner names whose model a validate task carries (also a
	// cookie, which the result echoes): a client's name or "SRV_..." for
	// a server model (CrossSiteModelEval).
	HeaderModelOwner = "_model_owner_"
	// HeaderSubmitModelName asks submit_model for a model ("best_model").
	HeaderSubmitModelName = "submit_model_name"
	// HeaderTaskError says why a task failed, on a result whose __rc__ is
	// not OK: flarego's client sets it (NVFlare's does not), the server logs it.
	HeaderTaskError = "task_error"
)

// Special task names the server answers GetTask with.
const (
	TaskTryAgain = "__try_again__"
	TaskEndRun   = "__end_run__"
)

// DXO kinds and meta keys.
const (
	KindWeights    = "WEIGHTS"
	KindWeightDiff = "WEIGHT_DIFF"
	KindMetrics    = "METRICS"

	MetaNumStepsCurrentRound = "NUM_STEPS_CURRENT_ROUND"
)

// A Shareable is NVFlare's message body: a dict with "__headers__" and,
// for task data and results, a "DXO" entry.
type Shareable struct {
	Headers *pickle.Dict
	DXO     *DXO          // nil when absent
	Extra   []pickle.Item // other top-level entries, kept in order
}

// NewShareable returns a Shareable with empty headers.
func NewShareable() *Shareable { return &Shareable{Headers: &pickle.Dict{}} }

// Header returns a header's value.
func (s *Shareable) Header(key string) (any, bool) { return s.Headers.Get(key) }

// HeaderString returns a string header, or "".
func (s *Shareable) HeaderString(key string) string {
	v, _ := s.Headers.Get(key)
	str, _ := v.(string)
	return str
}

// SetHeader sets a header.
func (s *Shareable) SetHeader(key string, v any) { s.Headers.Set(key, v) }

// ReturnCode is the __rc__ header, "OK" when absent.
func (s *Shareable) ReturnCode() string {
	if rc := s.HeaderString(HeaderRC); rc != "" {
		return rc
	}
	return RCOK
}

// WaitTime is how long the server asks a client to wait before the next
// GetTask (with __try_again__). NVFlare 2.0.5 puts __wait_time__ at the top
// level of the Shareable, not in its headers; both are read.
func (s *Shareable) WaitTime() (float64, bool) {
	v, ok := s.Headers.Get(HeaderWaitTime)
	if !ok {
		for _, it := range s.Extra {
			if it.Key == HeaderWaitTime {
				v, ok = it.Value, true
			}
		}
	}
	switch n := v.(type) {
	case int64:
		return float64(n), ok
	case float64:
		return n, ok
	}
	return 0, false
}

// CookieJar returns the __cookie_jar__ header a result must echo back.
func (s *Shareable) CookieJar() *pickle.Dict {
	v, _ := s.Headers.Get(HeaderCookieJar)
	d, _ := v.(*pickle.Dict)
	return d
}

// A DXO is NVFlare's data exchange object: a kind, named arrays, and meta.
type DXO struct {
	Kind string
	Data []NamedArray
	// Values are data entries that are plain Python values, not arrays:
	// a METRICS DXO's {"val_acc": 0.93}. They follow Data on the wire.
	Values []pickle.Item
	Meta   *pickle.Dict
}

// NamedArray is one entry of a DXO's data: a numpy array as a tensor.
type NamedArray struct {
	Name  string
	Array *persistor.Tensor
}

// Get returns the named array or nil.
func (d *DXO) Get(name string) *persistor.Tensor {
	for _, a := range d.Data {
		if a.Name == name {
			return a.Array
		}
	}
	return nil
}

// Metric returns a number among the DXO's values (or a one-element
// array, as numpy scalars arrive).
func (d *DXO) Metric(name string) (float64, bool) {
	for _, v := range d.Values {
		if v.Key != name {
			continue
		}
		switch x := v.Value.(type) {
		case float64:
			return x, true
		case int64:
			return float64(x), true
		}
		return 0, false
	}
	if a := d.Get(name); a != nil && a.NumElements() == 1 {
		return a.Float64At(0), true
	}
	return 0, false
}

// MetricsDXO makes a METRICS DXO, as NVFlare's validators return it:
// data {name: float}.
func MetricsDXO(values ...pickle.Item) *DXO {
	return &DXO{Kind: KindMetrics, Values: values, Meta: &pickle.Dict{}}
}

// NumSteps returns the NUM_STEPS_CURRENT_ROUND meta value.
func (d *DXO) NumSteps() (int64, error) {
	if d.Meta == nil {
		return 0, fmt.Errorf("DXO has no meta %s", MetaNumStepsCurrentRound)
	}
	v, ok := d.Meta.Get(MetaNumStepsCurrentRound)
	if !ok {
		return 0, fmt.Errorf("DXO has no meta %s", MetaNumStepsCurrentRound)
	}
	switch n := v.(type) {
	case int64:
		return n, nil
	case float64:
		return int64(n), nil
	}
	return 0, fmt.Errorf("DXO meta %s is a %s", MetaNumStepsCurrentRound, pickle.TypeName(v))
}

// StateDict returns the DXO's arrays as a state dict (weights in PyTorch's
// names), sharing their memory. A number among the data is a 0-dim
// tensor: NVFlare's aggregator turns a 0-dim array (a batch norm's
// num_batches_tracked) into a numpy scalar, which travels as a number.
func (d *DXO) StateDict() *persistor.StateDict {
	sd := persistor.NewStateDict()
	for _, a := range d.Data {
		sd.Set(a.Name, a.Array)
	}
	for _, it := range d.Values {
		name, ok := it.Key.(string)
		if !ok {
			continue
		}
		switch v := it.Value.(type) {
		case float64:
			sd.Set(name, persistor.FromFloat64([]float64{v}))
		case int64:
			sd.Set(name, persistor.FromInt64([]int64{v}))
		}
	}
	return sd
}

// WeightsDXO makes a WEIGHTS DXO from a state dict.
func WeightsDXO(sd *persistor.StateDict, meta *pickle.Dict) *DXO {
	d := &DXO{Kind: KindWeights, Meta: meta}
	if d.Meta == nil {
		d.Meta = &pickle.Dict{}
	}
	for _, n := range sd.Names() {
		d.Data = append(d.Data, NamedArray{n, sd.Get(n)})
	}
	return d
}
