package flare

import (
	"fmt"

	"github.com/flarego/flarego/persistor"
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

func (a *accumulator) add(d *DXO, w float64) error {
	if len(d.Data) != len(a.names) {
		return fmt.Errorf("result has %d arrays, the model %d", len(d.Data), len(a.names))
	}
	for _, na := range d.Data {
		ref, ok := a.ref[na.Name]
		if !ok {
			return fmt.Errorf("result has an unknown array %q", na.Name)
		}
		if fmt.Sprint(na.Array.Shape) != fmt.Sprint(ref.Shape) {
			return fmt.Errorf("result array %q has shape %v, the model %v", na.Name, na.Array.Shape, ref.Shape)
		}
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
func (a *accumulator) result() (*persistor.StateDict, error) {
	if a.total <= 0 {
		return nil, fmt.Errorf("no results to aggregate")
	}
	sd := persistor.NewStateDict()
	for _, n := range a.names {
		ref, s := a.ref[n], a.sums[n]
		if ref.DType == persistor.Float32 {
			v := make([]float32, len(s))
			for i, x := range s {
				v[i] = float32(x / a.total)
			}
			sd.Set(n, persistor.FromFloat32(v, ref.Shape...))
			continue
		}
		v := make([]float64, len(s))
		for i, x := range s {
			v[i] = x / a.total
		}
		sd.Set(n, persistor.FromFloat64(v, ref.Shape...))
	}
	return sd, nil
}
