package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flarego/flarego/fcp"
	"github.com/flarego/flarego/internal/tensorboard"
	"github.com/flarego/flarego/pneumonia"
)

// flarego train --tb-logs DIR writes each epoch's loss, accuracy and
// throughput at step = epoch into DIR; FLAREGO_TB_LOGS=off, or a folder
// that cannot be made (a warning), writes none, and training goes on.
func TestTrainTensorBoard(t *testing.T) {
	dir := t.TempDir()
	input, output := filepath.Join(dir, "input"), filepath.Join(dir, "output")
	var out bytes.Buffer
	if rc := run([]string{"samples", "--n", "2", input}, &out, &out); rc != 0 {
		t.Fatal(out.String())
	}
	os.MkdirAll(output, 0o755)
	key := filepath.Join("..", "testdata", "fernet", "key.txt")
	train := []string{"train", "--input", input, "--output", output, "--key-file", key, "--epochs", "2", "--lr", "0.0001"}
	tb := filepath.Join(dir, "tb")
	t.Setenv(fcp.EnvTBLogs, "off") // the flag wins
	if rc := run(append(train, "--tb-logs", tb), &out, &out); rc != 0 {
		t.Fatalf("train: exit %d\n%s", rc, out.String())
	}
	files, _ := filepath.Glob(filepath.Join(tb, tensorboard.FilePrefix+"*"))
	if len(files) != 1 || !strings.Contains(out.String(), "training curves: "+files[0]) {
		t.Fatalf("event files %v\n%s", files, out.String())
	}
	events, err := tensorboard.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, e := range events {
		for _, v := range e.Values {
			if v.Value < 0 || v.Value != v.Value {
				t.Errorf("%s at step %d: %v", v.Tag, e.Step, v.Value)
			}
			got[v.Tag] += fmt.Sprint(e.Step)
		}
	}
	if want := map[string]string{pneumonia.TagTrainLoss: "12", pneumonia.TagTrainAccuracy: "12", pneumonia.TagImagesPerSecond: "12"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("tags at steps %v, want %v", got, want)
	}

	out.Reset()
	if rc := run(append(train, "--epochs", "1"), &out, &out); rc != 0 || strings.Contains(out.String(), "training curves") {
		t.Errorf("FLAREGO_TB_LOGS=off: exit %d\n%s", rc, out.String())
	}
	os.WriteFile(filepath.Join(dir, "file"), nil, 0o644)
	t.Setenv(fcp.EnvTBLogs, filepath.Join(dir, "file", "tb"))
	out.Reset()
	if rc := run(append(train, "--epochs", "1"), &out, &out); rc != 0 || !strings.Contains(out.String(), "warning: no training curves: ") {
		t.Errorf("unwritable TensorBoard folder: exit %d\n%s", rc, out.String())
	}
}

// flarego simulate --tb-logs DIR: each site writes its epochs and its
// validations into DIR/site-N, the server its rounds and the cross-site
// matrix into DIR/server; flarego report draws them all.
func TestSimulateTensorBoard(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join("..", "testdata", "fernet", "key.txt")
	job := writeJob(t, dir, key)
	addCrossSite(t, job)
	var out bytes.Buffer
	for i := 1; i <= 2; i++ {
		if rc := run([]string{"samples", "--n", "2", "--seed", fmt.Sprint(i), filepath.Join(dir, "data", fmt.Sprintf("site-%d", i))}, &out, &out); rc != 0 {
			t.Fatal(out.String())
		}
	}
	output, tb := filepath.Join(dir, "output"), filepath.Join(dir, "tb")
	os.MkdirAll(output, 0o755)
	if rc := run([]string{"simulate", job, "-n", "2", "--data", filepath.Join(dir, "data"), "--key-file", key, "--output", output,
		"--tb-logs", tb, "--set", "wait_time_after_min_received=0"}, &out, &out); rc != 0 {
		t.Fatalf("simulate: exit %d\n%s", rc, out.String())
	}
	tags := func(run string) map[string]string {
		files, _ := filepath.Glob(filepath.Join(tb, run, tensorboard.FilePrefix+"*"))
		if len(files) != 1 {
			t.Fatalf("%s: event files %v", run, files)
		}
		events, err := tensorboard.ReadFile(files[0])
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		for _, e := range events {
			for _, v := range e.Values {
				got[v.Tag] += fmt.Sprint(e.Step)
			}
		}
		return got
	}
	// The job: one round of one epoch; cross-site with the global model.
	for _, site := range []string{"site-1", "site-2"} {
		want := map[string]string{pneumonia.TagTrainLoss: "1", pneumonia.TagTrainAccuracy: "1", pneumonia.TagImagesPerSecond: "1"}
		for _, owner := range []string{"site-1", "site-2", "SRV_FL_global_model.pt"} {
			want[pneumonia.ValidationTag(owner, "accuracy")], want[pneumonia.ValidationTag(owner, "loss")] = "1", "1"
		}
		if got := tags(site); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s: %v\nwant %v", site, got, want)
		}
	}
	want := map[string]string{"round/contributions": "1", "round/num_steps": "1", "round/seconds": "1", "round/train_loss": "1", "round/train_accuracy": "1"}
	for _, site := range []string{"site-1", "site-2"} {
		for _, owner := range []string{"site-1", "site-2", "SRV_FL_global_model.pt"} {
			want["cross_site/"+owner+"/"+site] = "1"
		}
	}
	if got := tags("server"); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("server: %v\nwant %v", got, want)
	}
	out.Reset()
	png := filepath.Join(dir, "report.png")
	if rc := run([]string{"report", tb, "-o", png}, &out, &out); rc != 0 || !strings.Contains(out.String(), "loss, accuracy, throughput, cross-site matrix from 3 run(s)") {
		t.Errorf("report: exit %d\n%s", rc, out.String())
	}
}
