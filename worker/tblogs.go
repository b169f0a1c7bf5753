package main

import (
	"fmt"

	"github.com/flarego/flarego/internal/tensorboard"
	"github.com/flarego/flarego/model"
	"github.com/flarego/flarego/pneumonia"
)

// tbLogsUsage is the --tb-logs flag of train, simulate, server and client.
const tbLogsUsage = "TensorBoard folder for the training curves (default: $FLAREGO_TB_LOGS, else FCP's /tb-logs when it exists; off: none); " +
	"train writes into it, each site into DIR/SITE, the server into DIR/server"

// trainCurves opens flarego train's event file in dir: nil without dir,
// or with a warning when it cannot be made (training goes on).
func (c *command) trainCurves(dir string) *tensorboard.Writer {
	if dir == "" {
		return nil
	}
	w, err := tensorboard.Create(dir)
	if err != nil {
		fmt.Fprintf(c.stderr, "warning: no training curves: %v\n", err)
		return nil
	}
	fmt.Fprintf(c.stderr, "training curves: %s\n", w.Path())
	return w
}

// epochCurves writes one epoch at step epoch; the writer's one error is
// a warning.
func (c *command) epochCurves(w *tensorboard.Writer, s model.EpochStats) {
	if err := w.Scalars(int64(s.Epoch), pneumonia.EpochScalars(s)...); err != nil {
		fmt.Fprintf(c.stderr, "warning: %v\n", err)
	}
}
