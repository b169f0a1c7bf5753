package pneumonia

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/internal/tensorboard"
	"github.com/flarego/flarego/model"
)

// A site with a TensorBoard folder writes its epochs at the global step
// round*epochs+epoch and its validations at the step of its last epoch,
// in TBLogs/<site>; its train result carries the last epoch's loss and
// accuracy beside NUM_STEPS_CURRENT_ROUND.
func TestTrainerCurves(t *testing.T) {
	dir := t.TempDir()
	key := testKey(t)
	job := writeJob(t, dir, key)
	input := filepath.Join(dir, "input")
	if err := model.WriteSyntheticSite(input, 2, 3); err != nil {
		t.Fatal(err)
	}
	tb := filepath.Join(dir, "tb-logs")
	var log []string
	reg := Registry(Config{JobDir: job, Key: key, Input: input, Output: filepath.Join(dir, "output"), TBLogs: tb, Site: "site-7",
		Logf: func(f string, a ...any) { log = append(log, f) }})
	ex, err := reg.Executors[PathTrainer]([]byte(`{"lr": 0.001, "epochs": 2}`))
	if err != nil {
		t.Fatal(err)
	}
	spec, _ := JobSpec(job, DefaultModelPath, key)
	init, err := model.Init(spec, 1)
	if err != nil {
		t.Fatal(err)
	}
	task := flare.NewShareable()
	task.SetHeader(flare.HeaderCurrentRound, int64(1))
	task.DXO = flare.WeightsDXO(init, nil)
	r, err := ex.Execute(context.Background(), "train", task, nil)
	if err != nil || r.DXO == nil {
		t.Fatalf("train: %v", err)
	}
	for _, k := range []string{MetaTrainLoss, MetaTrainAccuracy} {
		if v, ok := r.DXO.Meta.Get(k); !ok {
			t.Errorf("result meta has no %s", k)
		} else if f, ok := v.(float64); !ok || f < 0 {
			t.Errorf("result meta %s = %v", k, v)
		}
	}
	val := flare.NewShareable()
	val.SetHeader(flare.HeaderModelOwner, "site-2")
	val.DXO = flare.WeightsDXO(init, nil)
	if _, err := ex.Execute(context.Background(), "validate", val, nil); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(tb, "site-7", tensorboard.FilePrefix+"*"))
	if len(files) != 1 {
		t.Fatalf("event files %v", files)
	}
	events, err := tensorboard.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]int64{}
	for _, e := range events {
		for _, v := range e.Values {
			got[v.Tag] = append(got[v.Tag], e.Step)
		}
	}
	for tag, steps := range map[string]string{TagTrainLoss: "[3 4]", TagTrainAccuracy: "[3 4]", TagImagesPerSecond: "[3 4]",
		"validate/site-2/accuracy": "[4]", "validate/site-2/loss": "[4]"} {
		if s := fmt.Sprint(got[tag]); s != steps {
			t.Errorf("%s at steps %s, want %s", tag, s, steps)
		}
	}
	if len(got) != 5 {
		t.Errorf("tags %v", got)
	}
	if !strings.Contains(strings.Join(log, "\n"), "training curves: %s") {
		t.Errorf("the log does not say where the curves go: %q", log)
	}
	// A folder that cannot be made is a warning, once; training goes on.
	os.WriteFile(filepath.Join(dir, "file"), nil, 0o644)
	log = nil
	reg = Registry(Config{JobDir: job, Key: key, Input: input, TBLogs: filepath.Join(dir, "file"), Site: "s", Logf: func(f string, a ...any) { log = append(log, f) }})
	ex, _ = reg.Executors[PathTrainer]([]byte(`{"lr": 0.001, "epochs": 1}`))
	if _, err := ex.Execute(context.Background(), "train", task, nil); err != nil {
		t.Fatalf("train with an unwritable TensorBoard folder: %v", err)
	}
	warnings := 0
	for _, l := range log {
		if strings.Contains(l, "no training curves") {
			warnings++
		}
	}
	if warnings != 1 {
		t.Errorf("%d warnings about the curves: %q", warnings, log)
	}
}
