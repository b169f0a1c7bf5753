package model

import (
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/flarego/flarego/persistor"
)

// Init returns a fresh state dict for the spec with PyTorch's default
// initialisation: conv and linear weights kaiming-uniform with a=√5 (bound
// 1/√fan_in), biases uniform in ±1/√fan_in, batch-norm weight 1, bias 0,
// running mean 0, running variance 1, num_batches_tracked 0. The random
// stream is Go's, seeded by seed, so it is reproducible but not PyTorch's.
func Init(s *Spec, seed uint64) (*persistor.StateDict, error) {
	ps, err := s.Params()
	if err != nil {
		return nil, err
	}
	rng := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	sd := persistor.NewStateDict()
	var fanIn int
	for _, p := range ps {
		if p.Int64 {
			sd.Set(p.Name, persistor.FromInt64([]int64{0}))
			continue
		}
		n := 1
		for _, d := range p.Shape {
			n *= d
		}
		v := make([]float32, n)
		switch suffix(p.Name) {
		case "weight":
			if len(p.Shape) >= 2 { // conv or linear
				fanIn = n / p.Shape[0]
				uniform(rng, v, 1/math.Sqrt(float64(fanIn)))
			} else { // batch norm
				fill(v, 1)
			}
		case "bias":
			if len(p.Shape) == 1 && fanIn > 0 && !isBN(ps, p.Name) {
				uniform(rng, v, 1/math.Sqrt(float64(fanIn)))
			}
		case "running_var":
			fill(v, 1)
		case "running_mean":
		default:
			return nil, fmt.Errorf("init: unexpected parameter %s", p.Name)
		}
		sd.Set(p.Name, persistor.FromFloat32(v, p.Shape...))
	}
	return sd, nil
}

func isBN(ps []Param, name string) bool {
	prefix := name[:len(name)-len("bias")]
	for _, p := range ps {
		if p.Name == prefix+"running_mean" {
			return true
		}
	}
	return false
}

func suffix(name string) string {
	for i := len(name) - 1; i >= 0; i-- {
		if name[i] == '.' {
			return name[i+1:]
		}
	}
	return name
}

func uniform(rng *rand.Rand, v []float32, bound float64) {
	for i := range v {
		v[i] = float32((rng.Float64()*2 - 1) * bound)
	}
}

func fill(v []float32, x float32) {
	for i := range v {
		v[i] = x
	}
}
