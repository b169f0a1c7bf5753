package server

import (
	"math"
	"path/filepath"
	"sort"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/internal/tensorboard"
)

// TensorBoard tags of the server's curves (Server.TBLogs), one value per
// round at step round+1.
const (
	TagContributions = "round/contributions" // results aggregated
	TagNumSteps      = "round/num_steps"     // their NUM_STEPS_CURRENT_ROUND, summed as weighted
	TagRoundSeconds  = "round/seconds"       // from the task sent to the model saved
	// The mean of the results' meta train_loss and train_accuracy (the
	// last epoch of each site, as flarego's trainer reports it), weighted
	// as their models are.
	TagTrainLoss     = "round/train_loss"
	TagTrainAccuracy = "round/train_accuracy"
)

// CrossSiteTag is the tag of site's val_acc of owner's model in the
// cross-site evaluation, written at step num_rounds.
func CrossSiteTag(owner, site string) string { return "cross_site/" + owner + "/" + site }

// RunName is the folder of the server's event files under TBLogs.
const RunName = "server"

// metaCurves are the result meta the server averages into its curves.
var metaCurves = [...]struct{ key, tag string }{
	{"train_loss", TagTrainLoss},
	{"train_accuracy", TagTrainAccuracy},
}

// runCurves are a run's event file and the round's sums of metaCurves;
// the sums are guarded by the server's mu. A nil *runCurves does nothing.
type runCurves struct {
	w       *tensorboard.Writer
	sums    [len(metaCurves)]float64
	weights [len(metaCurves)]float64
	failed  bool
}

// startCurves opens the run's event file in TBLogs/server (nothing
// without TBLogs; an error is a warning) and returns what closes it.
func (s *Server) startCurves(run *runState) func() {
	if s.TBLogs == "" {
		return func() {}
	}
	w, err := tensorboard.Create(filepath.Join(s.TBLogs, RunName))
	if err != nil {
		s.logf("warning: no training curves: %v", err)
		return func() {}
	}
	s.logf("training curves: %s", w.Path())
	c := &runCurves{w: w}
	s.mu.Lock()
	run.curves = c
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		run.curves = nil
		s.mu.Unlock()
		w.Close()
	}
}

// add adds an accepted result's meta, weighted; s.mu must be held.
func (c *runCurves) add(d *flare.DXO, weight float64) {
	if c == nil || d.Meta == nil {
		return
	}
	for i, m := range metaCurves {
		v, _ := d.Meta.Get(m.key)
		var x float64
		switch n := v.(type) {
		case float64:
			x = n
		case int64:
			x = float64(n)
		default:
			continue
		}
		if math.IsNaN(x) || math.IsInf(x, 0) || math.Abs(x) > math.MaxFloat32 {
			continue
		}
		c.sums[i] += weight * x
		c.weights[i] += weight
	}
}

// write writes values, logging the first error.
func (s *Server) writeCurves(c *runCurves, step int64, values []tensorboard.Value) {
	if err := c.w.Scalars(step, values...); err != nil {
		s.logf("warning: %v", err)
	}
}

// roundCurves writes round r's values.
func (s *Server) roundCurves(run *runState, r, contributions int, steps, seconds float64) {
	s.mu.Lock()
	c := run.curves
	if c == nil {
		s.mu.Unlock()
		return
	}
	values := []tensorboard.Value{
		{Tag: TagContributions, Value: float32(contributions)},
		{Tag: TagNumSteps, Value: float32(steps)},
		{Tag: TagRoundSeconds, Value: float32(seconds)},
	}
	for i, m := range metaCurves {
		if c.weights[i] > 0 {
			values = append(values, tensorboard.Value{Tag: m.tag, Value: float32(c.sums[i] / c.weights[i])})
		}
	}
	c.sums, c.weights = [len(metaCurves)]float64{}, [len(metaCurves)]float64{}
	s.mu.Unlock()
	s.writeCurves(c, int64(r)+1, values)
}

// crossSiteCurves writes the cross-site matrix: each site's val_acc of
// each owner's model.
func (s *Server) crossSiteCurves(run *runState, results map[string]map[string]map[string]any) {
	s.mu.Lock()
	c := run.curves
	s.mu.Unlock()
	if c == nil {
		return
	}
	var values []tensorboard.Value
	for site, byOwner := range results {
		for owner, m := range byOwner {
			var x float64
			switch v := m["val_acc"].(type) {
			case float64:
				x = v
			case int64:
				x = float64(v)
			default:
				continue
			}
			values = append(values, tensorboard.Value{Tag: CrossSiteTag(owner, site), Value: float32(x)})
		}
	}
	if len(values) == 0 {
		return
	}
	sort.Slice(values, func(i, j int) bool { return values[i].Tag < values[j].Tag })
	s.writeCurves(c, int64(run.sag.NumRounds), values)
}
