package pneumonia

import (
	"sync"

	"github.com/flarego/flarego/fcp"
	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/internal/tensorboard"
	"github.com/flarego/flarego/model"
)

// TensorBoard tags of the training curves, per epoch: flarego train and
// every site write them (a site at the global step round*epochs+epoch).
const (
	TagTrainLoss       = "train/loss"
	TagTrainAccuracy   = "train/accuracy"
	TagImagesPerSecond = "train/images_per_second"
)

// ValidationTag is the tag of a site's score of owner's model (validate,
// cross-site evaluation): metric is "accuracy" or "loss".
func ValidationTag(owner, metric string) string { return "validate/" + owner + "/" + metric }

// Meta keys of a train result's DXO: the last epoch's mean loss and
// accuracy on the site's training images, beside NUM_STEPS_CURRENT_ROUND.
// flarego's server averages them (weighted as the models) into its
// per-round curves; NVFlare's ignores them.
const (
	MetaTrainLoss     = "train_loss"
	MetaTrainAccuracy = "train_accuracy"
)

// EpochScalars are the values of one epoch's curves.
func EpochScalars(s model.EpochStats) []tensorboard.Value {
	return []tensorboard.Value{
		{Tag: TagTrainLoss, Value: float32(s.Loss)},
		{Tag: TagTrainAccuracy, Value: float32(s.Accuracy)},
		{Tag: TagImagesPerSecond, Value: float32(s.ImagesPerSecond())},
	}
}

// curves are one site's TensorBoard event file, opened with the first
// value; a nil *curves writes nothing. A failure to open or write is
// logged once, and training goes on. The file stays open as long as the
// trainer (an executor has no end), each record on disk once written.
type curves struct {
	dir    string
	logf   func(string, ...any)
	mu     sync.Mutex
	w      *tensorboard.Writer
	failed bool
	trains int64 // train tasks so far: the round when the task says none
	last   int64 // the global step of the last epoch written
}

// newCurves is the site's curves in dir/site, or nil without dir.
func newCurves(dir, site string, logf func(string, ...any)) *curves {
	if dir == "" {
		return nil
	}
	if site == "" {
		site = "site"
	}
	return &curves{dir: fcp.RunDir(dir, site), logf: logf}
}

// round is a train task's round: its current_round header, else the
// number of train tasks before it.
func (c *curves) round(task *flare.Shareable) int64 {
	if c == nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.trains
	c.trains++
	if v, ok := task.Header(flare.HeaderCurrentRound); ok {
		if n, ok := v.(int64); ok && n >= 0 {
			r = n
		}
	}
	return r
}

// epoch writes one epoch's values at step round*epochs+epoch.
func (c *curves) epoch(round int64, s model.EpochStats) {
	if c == nil {
		return
	}
	step := round*int64(s.Epochs) + int64(s.Epoch)
	c.write(step, EpochScalars(s)...)
	c.mu.Lock()
	c.last = step
	c.mu.Unlock()
}

// validation writes a score of owner's model at the step of the site's
// last epoch.
func (c *curves) validation(owner string, accuracy, loss float64) {
	if c == nil {
		return
	}
	c.mu.Lock()
	step := c.last
	c.mu.Unlock()
	c.write(step, tensorboard.Value{Tag: ValidationTag(owner, "accuracy"), Value: float32(accuracy)},
		tensorboard.Value{Tag: ValidationTag(owner, "loss"), Value: float32(loss)})
}

func (c *curves) write(step int64, values ...tensorboard.Value) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.failed {
		return
	}
	if c.w == nil {
		w, err := tensorboard.Create(c.dir)
		if err != nil {
			c.failed = true
			c.logf("warning: no training curves: %v", err)
			return
		}
		c.w = w
		c.logf("training curves: %s", w.Path())
	}
	if err := c.w.Scalars(step, values...); err != nil {
		c.failed = true
		c.logf("warning: %v", err)
	}
}
