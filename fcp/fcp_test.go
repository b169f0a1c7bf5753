package fcp

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flarego/flarego/persistor"
)

func TestFCPLookupOrder(t *testing.T) {
	root := t.TempDir()
	loc := Locations{Input: filepath.Join(root, "input"), ServerCredentials: filepath.Join(root, "server-credentials")}
	os.MkdirAll(loc.Input, 0o755)
	if got := loc.KeyPath(); got != filepath.Join(loc.Input, SecretParams) {
		t.Errorf("without server credentials: %s", got)
	}
	if _, err := loc.KeyFile(); !errors.Is(err, persistor.ErrNoKey) {
		t.Errorf("no key anywhere: %v", err)
	}
	os.MkdirAll(loc.ServerCredentials, 0o700)
	if got := loc.KeyPath(); got != filepath.Join(loc.ServerCredentials, SecretParams) {
		t.Errorf("with server credentials: %s", got)
	}
	t.Setenv("FLAREGO_INPUT", "/elsewhere")
	if Default().Input != "/elsewhere" {
		t.Error("FLAREGO_INPUT not honoured")
	}
}

func TestDefaultRoots(t *testing.T) {
	for _, env := range []string{EnvInput, EnvOutput, EnvServerCredentials, EnvApp} {
		t.Setenv(env, "")
	}
	if got := Default(); got != (Locations{Input: "/input", Output: "/output", ServerCredentials: "/server-credentials", App: "/app"}) {
		t.Errorf("Default() = %+v", got)
	}
	t.Setenv("FLAREGO_OUTPUT", "/o")
	t.Setenv("FLAREGO_SERVER_CREDENTIALS", "/c")
	if got := Default(); got.Output != "/o" || got.ServerCredentials != "/c" {
		t.Errorf("environment not honoured: %+v", got)
	}
}

// A key file that is a named pipe used to block the open until a writer
// came; the lookup refuses it at once, naming it and what it is.
func TestKeyFileFIFORefused(t *testing.T) {
	dir := t.TempDir()
	if err := syscall.Mkfifo(filepath.Join(dir, SecretParams), 0o600); err != nil {
		t.Skipf("no FIFOs here: %v", err)
	}
	done := make(chan error, 1)
	go func() { _, err := (Locations{Input: dir}).KeyFile(); done <- err }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "is not a regular file (a named pipe)") || !strings.Contains(err.Error(), dir) {
			t.Errorf("KeyFile: err %v, want it to name the file and say it is a named pipe", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("KeyFile blocks on a named pipe")
	}
}

func TestLayout(t *testing.T) {
	in := t.TempDir()
	l := Locations{Input: in, Output: "/out"}
	if _, err := l.TrainingFolder(); err == nil || !strings.Contains(err.Error(), "finding the training data") {
		t.Errorf("no datasets folder: %v", err)
	}
	os.MkdirAll(filepath.Join(in, "datasets"), 0o755)
	os.WriteFile(filepath.Join(in, "datasets", "a-file"), nil, 0o644)
	if _, err := l.TrainingFolder(); err == nil || !strings.Contains(err.Error(), "has no dataset folders") {
		t.Errorf("no dataset folders: %v", err)
	}
	for _, d := range []string{"zeta", "beta"} {
		os.MkdirAll(filepath.Join(in, "datasets", d), 0o755)
	}
	if got, err := l.TrainingFolder(); err != nil || got != filepath.Join(in, "datasets", "beta", "file_data") {
		t.Errorf("TrainingFolder() = %s, %v; want the first dataset by name", got, err)
	}
	for _, c := range []struct{ got, want string }{
		{l.InferenceFolder(), filepath.Join(in, "file_data")},
		{l.DatasetCSV(), filepath.Join(in, "dataset.csv")},
		{l.ScoresCSV(), "/out/dataset.csv"},
		{l.GlobalModel(), "/out/model_parameters.pt.enc"},
		{l.OutputPath(DefaultGlobalModel), "/out/model_parameters.pt.enc"},
		{l.OutputPath("/output/sub/m.pt"), "/out/sub/m.pt"},
		{l.OutputPath("/elsewhere/m.pt"), "/elsewhere/m.pt"},
		{l.OutputPath("/outputs/m.pt"), "/outputs/m.pt"},
		{Locations{Output: "rel"}.OutputPath("/output/m"), filepath.Join("rel", "m")},
	} {
		if c.got != c.want {
			t.Errorf("got %s, want %s", c.got, c.want)
		}
	}
}
