// Package fcp is the one place that knows the layout of a Rhino Health FCP
// container: where the site's data, the results and the run's secret are,
// how the environment moves them, and where the key is looked for.
//
// Entry points: [Default] gives the container's [Locations] ("/input",
// "/output", "/server-credentials", each moved by its environment variable:
// [EnvInput], [EnvOutput], [EnvServerCredentials]); [Locations.KeyFile]
// loads the key from [SecretParams] in the seed's lookup order
// ([Locations.KeyPath]); [Locations.TrainingFolder], [Locations.InferenceFolder],
// [Locations.DatasetCSV], [Locations.ScoresCSV] and [Locations.GlobalModel]
// name the data and results inside them; [Locations.OutputPath] moves a path
// a job names under the container's "/output".
//
// Promise: every command that reads or writes the FCP layout goes through
// this package, so the layout is changed here or nowhere; a missing key is
// an error wrapping [persistor.ErrNoKey] that names both paths tried.
package fcp

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/flarego/flarego/persistor"
)

// The container's roots, as FCP mounts them.
const (
	DefaultInput             = "/input"
	DefaultOutput            = "/output"
	DefaultServerCredentials = "/server-credentials"
	// DefaultApp is the job the image carries (config/ and custom/, the
	// architecture encrypted as custom/network.json.enc).
	DefaultApp = "/app"
)

// The environment variables that move the roots (tests and runs outside a
// container).
const (
	EnvInput             = "FLAREGO_INPUT"
	EnvOutput            = "FLAREGO_OUTPUT"
	EnvServerCredentials = "FLAREGO_SERVER_CREDENTIALS"
	EnvApp               = "FLAREGO_APP"
)

// SecretParams is the file name FCP gives the run's secrets
// ({"key": "..."}), in the server credentials or the input directory.
const SecretParams = "secret_run_params.json"

// Names inside the roots.
const (
	// DatasetsDir holds one folder per dataset under Input; training reads
	// the first by name.
	DatasetsDir = "datasets"
	// ImagesDir is a dataset's images (an ImageFolder: one folder per
	// class); Input/ImagesDir is what inference scores.
	ImagesDir = "file_data"
	// DatasetCSVName is the dataset table: Input's lists the images to
	// score, Output's is that table with the scores.
	DatasetCSVName = "dataset.csv"
	// GlobalModelName is the encrypted model the run leaves in Output.
	GlobalModelName = "model_parameters.pt.enc"
)

// Locations are the FCP container's well-known directories. Commands move
// them with flags; Default moves them with the environment.
type Locations struct {
	Input             string // "/input": site data and, on clients, the key
	Output            string // "/output": results
	ServerCredentials string // "/server-credentials": the server's key
	App               string // "/app": the job in the image
	// Key, when set, is the key file a command was given (--key-file):
	// KeyPath is then that file, not the FCP lookup.
	Key string
	// TBLogs, when set, is the TensorBoard directory a command was given
	// (--tb-logs); TensorBoardDir says where the event files go.
	TBLogs string
}

// Default returns the FCP paths, each moved by its environment variable
// when that is set.
func Default() Locations {
	get := func(env, def string) string {
		if v := os.Getenv(env); v != "" {
			return v
		}
		return def
	}
	return Locations{
		Input:             get(EnvInput, DefaultInput),
		Output:            get(EnvOutput, DefaultOutput),
		ServerCredentials: get(EnvServerCredentials, DefaultServerCredentials),
		App:               get(EnvApp, DefaultApp),
	}
}

// JobSpecName is the job's encrypted architecture inside its app folder.
const JobSpecName = "custom/network.json.enc"

// JobSpec is the architecture of the job the image carries,
// App/custom/network.json.enc, or "" when there is none (outside the
// image): train and infer use it when no --spec is given.
func (l Locations) JobSpec() string {
	if l.App == "" {
		return ""
	}
	p := filepath.Join(l.App, filepath.FromSlash(JobSpecName))
	if st, err := os.Stat(p); err != nil || !st.Mode().IsRegular() {
		return ""
	}
	return p
}

// KeyPath is where the seed looks for the key: the server credentials
// directory when it exists, else the input directory.
func (l Locations) KeyPath() string {
	if l.Key != "" {
		return l.Key
	}
	if st, err := os.Stat(l.ServerCredentials); err == nil && st.IsDir() {
		return filepath.Join(l.ServerCredentials, SecretParams)
	}
	return filepath.Join(l.Input, SecretParams)
}

// KeyFile loads the key from KeyPath. A missing file is an error that wraps
// persistor.ErrNoKey and names the paths tried.
func (l Locations) KeyFile() (*persistor.Key, error) {
	k, err := persistor.ReadKeyFile(l.KeyPath())
	if err != nil {
		return nil, fmt.Errorf("%w (FCP lookup: %s if that directory exists, else %s)", err,
			filepath.Join(l.ServerCredentials, SecretParams), filepath.Join(l.Input, SecretParams))
	}
	return k, nil
}

// TrainingFolder is where the seed's trainer finds its images:
// Input/datasets/<first dataset, by name>/file_data.
func (l Locations) TrainingFolder() (string, error) {
	dir := filepath.Join(l.Input, DatasetsDir)
	entries, err := readDir(dir)
	if err != nil {
		return "", fmt.Errorf("finding the training data: %w", err)
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() {
			names = append(names, e.Name())
		}
	}
	if len(names) == 0 {
		return "", fmt.Errorf("finding the training data: %s has no dataset folders", dir)
	}
	sort.Strings(names)
	return filepath.Join(dir, names[0], ImagesDir), nil
}

// InferenceFolder is the images inference scores: Input/file_data.
func (l Locations) InferenceFolder() string { return filepath.Join(l.Input, ImagesDir) }

// DatasetCSV is the table naming the images to score: Input/dataset.csv.
func (l Locations) DatasetCSV() string { return filepath.Join(l.Input, DatasetCSVName) }

// ScoresCSV is that table with the scores added: Output/dataset.csv.
func (l Locations) ScoresCSV() string { return filepath.Join(l.Output, DatasetCSVName) }

// GlobalModel is the encrypted model a run writes:
// Output/model_parameters.pt.enc.
func (l Locations) GlobalModel() string { return filepath.Join(l.Output, GlobalModelName) }

// DefaultGlobalModel is GlobalModel in the container as FCP mounts it, the
// persistor's global_model_file_name unless the job says otherwise.
const DefaultGlobalModel = DefaultOutput + "/" + GlobalModelName

// OutputPath moves a path that a job names under the container's "/output"
// to the same place under l.Output; any other path is returned as it is.
func (l Locations) OutputPath(p string) string {
	if rest, ok := strings.CutPrefix(p, DefaultOutput+"/"); ok {
		return filepath.Join(l.Output, rest)
	}
	return p
}

// readDir is os.ReadDir for a path that must be a directory: it checks
// first, as opening a named pipe would block.
func readDir(path string) ([]os.DirEntry, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !st.IsDir() {
		return nil, &fs.PathError{Op: "open", Path: path, Err: syscall.ENOTDIR}
	}
	return os.ReadDir(path)
}
