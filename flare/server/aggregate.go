package server

import (
	"fmt"
	"math"
	"math/big"
	"slices"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/persistor"
	"github.com/flarego/flarego/persistor/pickle"
)

// Bounds on what one result may add to a round (see the README's Security
// section). Within them no weighted sum can overflow float64: 2^40 steps
// times |x| ≤ MaxFloat32 is below 2^168, and a round adds at most a few
// thousand results, so a refused result is the only way to a non-finite
// global model.
const (
	// maxNumSteps bounds a result's NUM_STEPS_CURRENT_ROUND, its weight:
	// 2^40 (about 10^12) training steps in one round is no real round, and
	// a larger weight would let one site outvote all others for good.
	maxNumSteps = 1 << 40
	// maxAbsValue bounds the magnitude of every value of a result: the
	// largest finite float32, the dtype the models train in.
	maxAbsValue = math.MaxFloat32
)

// accumulator is InTimeAccumulateWeightedAggregator: it adds each result,
// weighted by its NUM_STEPS_CURRENT_ROUND, into float64 sums as it arrives,
// so a round never holds more than the sums and one result.
type accumulator struct {
	names []string
	ref   map[string]*persistor.Tensor
	sums  map[string][]float64
	total float64
}

func newAccumulator(global *persistor.StateDict) (*accumulator, error) {
	a := &accumulator{ref: map[string]*persistor.Tensor{}, sums: map[string][]float64{}}
	for _, n := range global.Names() {
		t := global.Get(n)
		a.names = append(a.names, n)
		a.ref[n] = t
		a.sums[n] = make([]float64, t.NumElements())
	}
	return a, nil
}

// resultWeight is a result's NUM_STEPS_CURRENT_ROUND as the aggregator
// weighs it. A result without one (or with None) weighs 1, as NVFlare's
// aggregator weighs it with a warning; present says whether it had one.
// Anything but a positive whole number up to maxNumSteps is refused: a
// negative, NaN or infinite weight would make the mean meaningless or
// non-finite, and a huge one would let one site decide the model alone.
func resultWeight(d *flare.DXO) (w float64, present bool, err error) {
	var v any
	if d.Meta != nil {
		v, present = d.Meta.Get(flare.MetaNumStepsCurrentRound)
	}
	if !present || v == nil {
		return 1, false, nil
	}
	switch n := v.(type) {
	case int64:
		if n <= 0 || n > maxNumSteps {
			return 0, true, fmt.Errorf("%s is %d (a whole number from 1 to 2^40)", flare.MetaNumStepsCurrentRound, n)
		}
		return float64(n), true, nil
	case float64:
		if math.IsNaN(n) || math.IsInf(n, 0) || n != math.Trunc(n) || n <= 0 || n > maxNumSteps {
			return 0, true, fmt.Errorf("%s is %v (a whole number from 1 to 2^40)", flare.MetaNumStepsCurrentRound, n)
		}
		return n, true, nil
	case *big.Int:
		return 0, true, fmt.Errorf("%s is a %d-bit integer (a whole number from 1 to 2^40)", flare.MetaNumStepsCurrentRound, n.BitLen())
	}
	return 0, true, fmt.Errorf("%s is a %s, not a number", flare.MetaNumStepsCurrentRound, pickle.TypeName(v))
}

// check refuses a result that cannot be averaged into the model: its
// arrays must be the model's, each once, with the model's shapes and a
// dtype of the same kind, and every value finite and at most maxAbsValue
// in magnitude. It looks at everything before add changes a sum, so a
// refused result leaves no trace in the round.
func (a *accumulator) check(d *flare.DXO) error {
	if len(d.Data) != len(a.names) {
		return fmt.Errorf("result has %d arrays, the model %d", len(d.Data), len(a.names))
	}
	seen := make(map[string]bool, len(d.Data))
	for _, na := range d.Data {
		ref, ok := a.ref[na.Name]
		if !ok {
			return fmt.Errorf("result has an unknown array %q", na.Name)
		}
		if seen[na.Name] {
			return fmt.Errorf("result has array %q twice", na.Name)
		}
		seen[na.Name] = true
		t := na.Array
		if t == nil {
			return fmt.Errorf("result array %q is empty", na.Name)
		}
		if !slices.Equal(t.Shape, ref.Shape) {
			return fmt.Errorf("result array %q has shape %v, the model %v", na.Name, t.Shape, ref.Shape)
		}
		if !dtypeFits(t.DType, ref.DType) {
			return fmt.Errorf("result array %q is %s, the model's %s", na.Name, t.DType, ref.DType)
		}
		if len(t.Data) != t.NumElements()*t.DType.Size() {
			return fmt.Errorf("result array %q has %d bytes for shape %v", na.Name, len(t.Data), t.Shape)
		}
		if i, x, bad := firstBadValue(t); bad {
			return fmt.Errorf("result array %q element %d is %v (values must be finite, magnitude at most %.3g)", na.Name, i, x, maxAbsValue)
		}
	}
	return nil
}

// dtypeFits says whether a result array of dtype got may stand for a
// model array of dtype want. A floating array must come back floating;
// float64 model arrays take integers too, because NVFlare's aggregation
// turns integer buffers (num_batches_tracked) into float64 and a PyTorch
// client returns them in its own integer dtype. Booleans only for
// booleans.
func dtypeFits(got, want persistor.DType) bool {
	float := func(d persistor.DType) bool {
		return d == persistor.Float32 || d == persistor.Float64 || d == persistor.Float16 || d == persistor.BFloat16
	}
	switch {
	case got == want:
		return true
	case got == persistor.Bool || want == persistor.Bool:
		return false
	case float(want) && want != persistor.Float64:
		return float(got)
	}
	return got >= 0 && got < persistor.Bool // any other numeric dtype
}

// firstBadValue finds the first value that is NaN, infinite or larger in
// magnitude than maxAbsValue.
func firstBadValue(t *persistor.Tensor) (int, float64, bool) {
	if t.DType == persistor.Float32 {
		v, _ := t.Float32s()
		for i, x := range v {
			if f := float64(x); math.IsNaN(f) || math.IsInf(f, 0) {
				return i, f, true
			}
		}
		return 0, 0, false
	}
	for i := range t.NumElements() {
		if x := t.Float64At(i); math.IsNaN(x) || math.Abs(x) > maxAbsValue {
			return i, x, true
		}
	}
	return 0, 0, false
}

// add checks a result (check) and adds it with weight w.
func (a *accumulator) add(d *flare.DXO, w float64) error {
	if err := a.check(d); err != nil {
		return err
	}
	for _, na := range d.Data {
		s := a.sums[na.Name]
		t := na.Array
		if t.DType == persistor.Float32 {
			v, _ := t.Float32s()
			for i, x := range v {
				s[i] += w * float64(x)
			}
			continue
		}
		for i := range s {
			s[i] += w * t.Float64At(i)
		}
	}
	a.total += w
	return nil
}

// result is the weighted mean: float32 tensors stay float32, other dtypes
// (num_batches_tracked) become float64, as NVFlare's aggregation makes them.
// A mean that is not finite everywhere is an error, never a model.
func (a *accumulator) result() (*persistor.StateDict, error) {
	if a.total <= 0 || math.IsNaN(a.total) || math.IsInf(a.total, 0) {
		return nil, fmt.Errorf("no results to aggregate")
	}
	sd := persistor.NewStateDict()
	for _, n := range a.names {
		ref, s := a.ref[n], a.sums[n]
		if ref.DType == persistor.Float32 {
			v := make([]float32, len(s))
			for i, x := range s {
				v[i] = float32(x / a.total)
				if f := float64(v[i]); math.IsNaN(f) || math.IsInf(f, 0) {
					return nil, fmt.Errorf("the aggregated array %q element %d is %v", n, i, f)
				}
			}
			sd.Set(n, persistor.FromFloat32(v, ref.Shape...))
			continue
		}
		v := make([]float64, len(s))
		for i, x := range s {
			v[i] = x / a.total
			if math.IsNaN(v[i]) || math.IsInf(v[i], 0) {
				return nil, fmt.Errorf("the aggregated array %q element %d is %v", n, i, v[i])
			}
		}
		sd.Set(n, persistor.FromFloat64(v, ref.Shape...))
	}
	return sd, nil
}
