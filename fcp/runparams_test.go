package fcp

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRunParams(t *testing.T) {
	dir := t.TempDir()
	l := Locations{Input: dir}
	if p, err := l.RunParams(); err != nil || p.Path != "" || p.String() != "no run parameters" {
		t.Fatalf("no file: %+v, %v", p, err)
	}
	write := func(s string) { os.WriteFile(filepath.Join(dir, RunParamsName), []byte(s), 0o600) }
	write(`{"epochs": 2, "lr": 0.001, "batch_size": 8, "seed": 3, "line\nforged": 1}`)
	p, err := l.RunParams()
	if err != nil || *p.Epochs != 2 || *p.LR != 0.001 || *p.Batch != 8 {
		t.Fatalf("%+v, %v", p, err)
	}
	if s := p.String(); strings.Contains(s, "\n") || !strings.Contains(s, `"line\nforged"`) || !strings.HasPrefix(s, "epochs=2 lr=0.001 batch=8 (from ") {
		t.Errorf("String() = %q", s)
	}
	for in, want := range map[string]string{
		`[1, 2]`:                            "not a JSON object",
		`{"epochs": 0}`:                     `"epochs" is 0, want a whole number`,
		`{"epochs": 1.5}`:                   `"epochs" is 1.5`,
		`{"epochs": "2"}`:                   `"epochs" is "2"`,
		`{"lr": -1}`:                        `"lr" is -1, want a learning rate`,
		`{"lr": 1e400}`:                     `"lr" is 1e400`,
		`{"batch": 4, "batch_size": 4}`:     "both batch and batch_size",
		strings.Repeat(" ", maxRunParams+1): "over 1024 KiB",
	} {
		write(in)
		if _, err := l.RunParams(); err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), RunParamsName) {
			t.Errorf("%.40q: %v; want an error naming the file with %q", in, err, want)
		}
	}
	os.Remove(filepath.Join(dir, RunParamsName))
	os.Mkdir(filepath.Join(dir, RunParamsName), 0o700)
	if _, err := l.RunParams(); err == nil {
		t.Error("a folder named run_params.json was read")
	}
}
