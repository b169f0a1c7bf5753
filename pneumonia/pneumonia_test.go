package pneumonia

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flarego/flarego/fcp"
	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/wire20"
	"github.com/flarego/flarego/model"
	"github.com/flarego/flarego/persistor"
	"github.com/flarego/flarego/persistor/pickle"
)

// writeJob makes DIR/job: the pneumonia job's configs and its spec
// encrypted with key, as a deployment holds them.
func writeJob(t *testing.T, dir string, key *persistor.Key) string {
	t.Helper()
	job := filepath.Join(dir, "job")
	os.MkdirAll(filepath.Join(job, "config"), 0o755)
	os.MkdirAll(filepath.Join(job, "custom"), 0o755)
	for _, f := range []string{"config_fed_server.json", "config_fed_client.json"} {
		b, err := os.ReadFile(filepath.Join("..", "job", "pneumonia", "config", f))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(job, "config", f), b, 0o644)
	}
	spec, err := os.ReadFile(filepath.Join("..", "testdata", "pneumonia_spec.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := persistor.WriteEncrypted(filepath.Join(job, "custom", "network.json.enc"), key, func(w io.Writer) error {
		_, err := w.Write(spec)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return job
}

func testKey(t *testing.T) *persistor.Key {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "testdata", "fernet", "key.txt"))
	if err != nil {
		t.Fatal(err)
	}
	key, err := persistor.ParseKey(string(bytes.TrimSpace(b)))
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// The trainer's cross-site tasks: validate scores a model on the site's
// images and replies METRICS; bad task data gets BAD_TASK_DATA;
// submit_model before any training fails cleanly, after it returns the
// trained weights.
func TestTrainerValidateAndSubmitModel(t *testing.T) {
	dir := t.TempDir()
	key := testKey(t)
	job := writeJob(t, dir, key)
	input := filepath.Join(dir, "input")
	if err := model.WriteSyntheticSite(input, 3, 7); err != nil {
		t.Fatal(err)
	}
	reg := Registry(Config{JobDir: job, Key: key, Input: input, Output: filepath.Join(dir, "output"), Logf: t.Logf})
	ex, err := reg.Executors[PathTrainer]([]byte(`{"lr": 0.001, "epochs": 1}`))
	if err != nil {
		t.Fatal(err)
	}
	spec, err := JobSpec(job, "network.PneumoniaModel", key)
	if err != nil {
		t.Fatal(err)
	}
	init, err := model.Init(spec, 1)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	rc := func(s *flare.Shareable) string { return s.ReturnCode() }

	r, err := ex.Execute(ctx, "submit_model", flare.NewShareable(), nil)
	if err != nil || rc(r) != flare.RCExecutionException {
		t.Fatalf("submit_model before training: %v, rc %s", err, rc(r))
	}
	task := flare.NewShareable()
	task.SetHeader(flare.HeaderModelOwner, "site-2")
	task.DXO = flare.WeightsDXO(init, nil)
	r, err = ex.Execute(ctx, "validate", task, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.DXO == nil || r.DXO.Kind != flare.KindMetrics || rc(r) != flare.RCOK {
		t.Fatalf("validate: %+v rc %q", r.DXO, rc(r))
	}
	root, err := (fcp.Locations{Input: input}).TrainingFolder()
	if err != nil {
		t.Fatal(err)
	}
	_, samples, _ := model.ImageFolder(root)
	acc, ok1 := r.DXO.Metric(MetricAccuracy)
	loss, ok2 := r.DXO.Metric(MetricLoss)
	n, ok3 := r.DXO.Metric(MetricImages)
	if !ok1 || !ok2 || !ok3 || acc < 0 || acc > 1 || loss <= 0 || int(n) != len(samples) || len(samples) == 0 {
		t.Fatalf("metrics %v (%d images on disk)", r.DXO.Values, len(samples))
	}
	// The accuracy is the share of images whose larger logit is their class.
	net, _ := model.NewNet(spec, init, 4)
	preds, err := model.Predict(ctx, net, samples, 4, nil)
	if err != nil {
		t.Fatal(err)
	}
	right := 0
	for _, p := range preds {
		if (p.Logits[1] > p.Logits[0]) == (p.Sample.Class == 1) {
			right++
		}
	}
	if want := float64(right) / float64(len(preds)); math.Abs(acc-want) > 1e-12 {
		t.Errorf("val_acc %v, want %v", acc, want)
	}
	// val_loss is the mean of -log softmax(logits)[class].
	var ce float64
	for _, p := range preds {
		l0, l1 := float64(p.Logits[0]), float64(p.Logits[1])
		m := math.Max(l0, l1)
		ce += m + math.Log(math.Exp(l0-m)+math.Exp(l1-m)) - float64(p.Logits[p.Sample.Class])
	}
	if want := ce / float64(len(preds)); math.Abs(loss-want) > 1e-9*math.Max(1, want) {
		t.Errorf("val_loss %v, want %v", loss, want)
	}
	// What goes on the wire decodes to the same metrics.
	wire, err := wire20.EncodeShareable(r)
	if err != nil {
		t.Fatal(err)
	}
	back, err := wire20.DecodeShareable(wire)
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := back.DXO.Metric(MetricAccuracy); v != acc {
		t.Errorf("decoded val_acc %v, sent %v", v, acc)
	}

	for name, bad := range map[string]*flare.DXO{
		"no DXO":      nil,
		"metrics DXO": flare.MetricsDXO(pickle.Item{Key: "val_acc", Value: 1.0}),
		"wrong shapes": flare.WeightsDXO(func() *persistor.StateDict {
			sd := persistor.NewStateDict()
			sd.Set("fc.weight", init.Get("fc.bias"))
			return sd
		}(), nil),
	} {
		task := flare.NewShareable()
		task.DXO = bad
		r, err := ex.Execute(ctx, "validate", task, nil)
		if err != nil || rc(r) != flare.RCBadTaskData {
			t.Errorf("validate with %s: %v, rc %q", name, err, rc(r))
		}
	}

	task = flare.NewShareable()
	task.DXO = flare.WeightsDXO(init, nil)
	if r, err = ex.Execute(ctx, "train", task, nil); err != nil || r.DXO == nil {
		t.Fatalf("train: %v", err)
	}
	trained := r.DXO
	r, err = ex.Execute(ctx, "submit_model", flare.NewShareable(), nil)
	if err != nil || r.DXO == nil || r.DXO.Kind != flare.KindWeights || len(r.DXO.Data) != len(trained.Data) {
		t.Fatalf("submit_model after training: %v %+v", err, r)
	}
	for i, a := range r.DXO.Data {
		if a.Name != trained.Data[i].Name || !bytes.Equal(a.Array.Data, trained.Data[i].Array.Data) {
			t.Fatalf("submit_model's %s differs from the trained weights", a.Name)
		}
	}
}

// FCP's run parameters override the job config's hyper-parameters, and
// the log says so; a bad file stops the trainer naming it.
func TestRunParamsOverrideJobConfig(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, fcp.RunParamsName), []byte(`{"epochs": 3, "lr": 0.002, "seed": 7}`), 0o600)
	var log []string
	logf := func(f string, a ...any) { log = append(log, fmt.Sprintf(f, a...)) }
	args, err := withRunParams(TrainerArgs{LR: 0.01, Epochs: 1, Batch: 4}, dir, logf)
	if err != nil || args.Epochs != 3 || args.LR != 0.002 || args.Batch != 4 {
		t.Fatalf("%+v, %v", args, err)
	}
	if len(log) != 1 || !strings.Contains(log[0], "epochs=3 lr=0.002 batch_size=4 (job config: epochs=1 lr=0.01") {
		t.Errorf("log: %q", log)
	}
	os.WriteFile(filepath.Join(dir, fcp.RunParamsName), []byte(`{"epochs": -1}`), 0o600)
	if _, err := withRunParams(TrainerArgs{}, dir, logf); err == nil || !strings.Contains(err.Error(), "run_params.json") {
		t.Errorf("bad run parameters: %v", err)
	}
}
