package flare

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"syscall"
)

// Component is one entry of an NVFlare job config: an id, the Python path
// of its class, and its arguments.
type Component struct {
	ID   string          `json:"id"`
	Path string          `json:"path"`
	Args json.RawMessage `json:"args"`
}

// ServerConfig is config_fed_server.json (format_version 2).
type ServerConfig struct {
	FormatVersion int `json:"format_version"`
	Server        struct {
		HeartBeatTimeout float64 `json:"heart_beat_timeout"`
	} `json:"server"`
	Components        []Component `json:"components"`
	Workflows         []Component `json:"workflows"`
	TaskDataFilters   []Component `json:"task_data_filters"`
	TaskResultFilters []Component `json:"task_result_filters"`
}

// ExecutorConfig maps tasks to an executor in config_fed_client.json.
type ExecutorConfig struct {
	Tasks    []string  `json:"tasks"`
	Executor Component `json:"executor"`
}

// ClientConfig is config_fed_client.json (format_version 2).
type ClientConfig struct {
	FormatVersion     int              `json:"format_version"`
	Executors         []ExecutorConfig `json:"executors"`
	Components        []Component      `json:"components"`
	TaskDataFilters   []Component      `json:"task_data_filters"`
	TaskResultFilters []Component      `json:"task_result_filters"`
}

// ScatterAndGatherArgs are the workflow's arguments, with NVFlare's defaults.
type ScatterAndGatherArgs struct {
	MinClients               int     `json:"min_clients"`
	NumRounds                int     `json:"num_rounds"`
	StartRound               int     `json:"start_round"`
	WaitTimeAfterMinReceived float64 `json:"wait_time_after_min_received"`
	AggregatorID             string  `json:"aggregator_id"`
	PersistorID              string  `json:"persistor_id"`
	ShareableGeneratorID     string  `json:"shareable_generator_id"`
	TrainTaskName            string  `json:"train_task_name"`
	TrainTimeout             float64 `json:"train_timeout"`
}

// AggregatorArgs are InTimeAccumulateWeightedAggregator's arguments.
type AggregatorArgs struct {
	ExpectedDataKind string `json:"expected_data_kind"`
}

// Job is an NVFlare app folder: config/ and custom/.
type Job struct {
	Dir    string
	Server *ServerConfig
	Client *ClientConfig
}

const maxConfigBytes = 1 << 20

func readJSON(path string, v any) error {
	f, err := openRegular(path)
	if err != nil {
		return err
	}
	defer f.Close()
	dec := json.NewDecoder(io.LimitReader(f, maxConfigBytes))
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// openRegular opens path if it is a regular file: a named pipe would block
// the open until a writer comes, so it is opened without blocking and its
// type checked before any read.
func openRegular(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		f.Close()
		if err == nil {
			err = fmt.Errorf("%s is not a regular file", path)
		}
		return nil, err
	}
	return f, nil
}

// LoadJob reads an app folder's config/config_fed_server.json and
// config/config_fed_client.json (either may be absent: a server needs only
// the first, a client the second).
func LoadJob(dir string) (*Job, error) {
	j := &Job{Dir: dir}
	sp := filepath.Join(dir, "config", "config_fed_server.json")
	if _, err := os.Stat(sp); err == nil {
		j.Server = &ServerConfig{}
		if err := readJSON(sp, j.Server); err != nil {
			return nil, err
		}
	}
	cp := filepath.Join(dir, "config", "config_fed_client.json")
	if _, err := os.Stat(cp); err == nil {
		j.Client = &ClientConfig{}
		if err := readJSON(cp, j.Client); err != nil {
			return nil, err
		}
	}
	if j.Server == nil && j.Client == nil {
		return nil, fmt.Errorf("%s: no config/config_fed_server.json or config/config_fed_client.json", dir)
	}
	return j, nil
}

// Component returns the server component with the given id.
func (c *ServerConfig) Component(id string) (Component, error) {
	for _, comp := range c.Components {
		if comp.ID == id {
			return comp, nil
		}
	}
	return Component{}, fmt.Errorf("config_fed_server.json has no component %q", id)
}

// ScatterAndGather returns the workflow's arguments with defaults filled
// in. ScatterAndGather comes first; CrossSiteModelEval may follow it.
func (c *ServerConfig) ScatterAndGather() (*ScatterAndGatherArgs, error) {
	if len(c.Workflows) == 0 {
		return nil, fmt.Errorf("config_fed_server.json has no workflow")
	}
	for i, w := range c.Workflows {
		switch {
		case i == 0 && isScatterAndGather(w.Path):
		case i == 1 && isCrossSite(w.Path):
			continue
		case isCrossSite(w.Path):
			return nil, fmt.Errorf("workflow %s: CrossSiteModelEval runs only right after ScatterAndGather: %w", w.ID, ErrNotImplemented)
		default:
			return nil, fmt.Errorf("workflow %q: %w", w.Path, ErrNotImplemented)
		}
	}
	w := c.Workflows[0]
	a := &ScatterAndGatherArgs{MinClients: 1, NumRounds: 5, WaitTimeAfterMinReceived: 10,
		AggregatorID: "aggregator", PersistorID: "persistor", ShareableGeneratorID: "shareable_generator", TrainTaskName: "train"}
	if len(w.Args) > 0 {
		if err := json.Unmarshal(w.Args, a); err != nil {
			return nil, fmt.Errorf("workflow %s args: %w", w.ID, err)
		}
	}
	if a.MinClients < 1 || a.NumRounds < 1 || a.StartRound < 0 || a.StartRound > a.NumRounds || a.WaitTimeAfterMinReceived < 0 {
		return nil, fmt.Errorf("workflow %s: bad min_clients/num_rounds/start_round/wait time", w.ID)
	}
	return a, nil
}

func isScatterAndGather(path string) bool {
	return path == PathScatterAndGather || path == "ScatterAndGather"
}

// jsonKeys lists the JSON names of a struct's fields.
func jsonKeys(v any) []string {
	t := reflect.TypeOf(v)
	var keys []string
	for i := range t.NumField() {
		if name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ","); name != "" && name != "-" {
			keys = append(keys, name)
		}
	}
	return keys
}

var (
	scatterAndGatherKeys = jsonKeys(ScatterAndGatherArgs{})
	crossSiteKeys        = jsonKeys(CrossSiteArgs{})
)

// WorkflowArgKeys are the workflow arguments SetWorkflowArg knows, sorted.
func WorkflowArgKeys() []string {
	keys := append(append([]string{}, scatterAndGatherKeys...), crossSiteKeys...)
	sort.Strings(keys)
	return keys
}

// SetWorkflowArg overrides one workflow argument, as NVFlare's --set
// key=value does: key must be an argument of ScatterAndGather or, when the
// job has one, of CrossSiteModelEval. value is read as JSON when it parses
// (numbers, true/false, lists) and as a string otherwise, and must suit the
// argument's type. An unknown key is refused, not ignored: a misspelt
// override would otherwise leave a run with the value it meant to change.
func (c *ServerConfig) SetWorkflowArg(key, value string) error {
	var check any
	target := -1
	for i, w := range c.Workflows {
		switch {
		case isScatterAndGather(w.Path) && slices.Contains(scatterAndGatherKeys, key):
			target, check = i, &ScatterAndGatherArgs{}
		case isCrossSite(w.Path) && slices.Contains(crossSiteKeys, key):
			target, check = i, &CrossSiteArgs{}
		default:
			continue
		}
		break
	}
	if target < 0 {
		switch {
		case slices.Contains(scatterAndGatherKeys, key):
			return fmt.Errorf("--set %s: the job has no ScatterAndGather workflow", key)
		case slices.Contains(crossSiteKeys, key):
			return fmt.Errorf("--set %s: the job has no CrossSiteModelEval workflow", key)
		}
		return fmt.Errorf("--set %s: unknown workflow argument (known: %s)", key, strings.Join(WorkflowArgKeys(), ", "))
	}
	w := &c.Workflows[target]
	args := map[string]any{}
	if len(w.Args) > 0 {
		if err := json.Unmarshal(w.Args, &args); err != nil {
			return fmt.Errorf("workflow %s args: %w", w.ID, err)
		}
	}
	var v any
	if err := json.Unmarshal([]byte(value), &v); err != nil {
		v = value
	}
	args[key] = v
	b, err := json.Marshal(args)
	if err != nil {
		return fmt.Errorf("--set %s=%s: %w", key, value, err)
	}
	if err := json.Unmarshal(b, check); err != nil {
		return fmt.Errorf("--set %s=%s: %w", key, value, err)
	}
	w.Args = b
	return nil
}

func isCrossSite(path string) bool {
	return path == PathCrossSiteModelEval || path == "CrossSiteModelEval"
}

// CrossSiteArgs are CrossSiteModelEval's arguments, with NVFlare 2.0's
// defaults.
type CrossSiteArgs struct {
	SubmitModelTimeout    float64  `json:"submit_model_timeout"`
	ValidationTimeout     float64  `json:"validation_timeout"`
	ModelLocatorID        string   `json:"model_locator_id"`
	FormatterID           string   `json:"formatter_id"`
	SubmitModelTaskName   string   `json:"submit_model_task_name"`
	ValidationTaskName    string   `json:"validation_task_name"`
	CleanupModels         bool     `json:"cleanup_models"`
	ParticipatingClients  []string `json:"participating_clients"`
	WaitForClientsTimeout float64  `json:"wait_for_clients_timeout"`
	CrossValDir           string   `json:"cross_val_dir"`
	TaskCheckPeriod       float64  `json:"task_check_period"`
}

// CrossSiteModelEval returns the cross-site evaluation that follows
// ScatterAndGather, or nil when the config has none.
func (c *ServerConfig) CrossSiteModelEval() (*CrossSiteArgs, error) {
	for _, w := range c.Workflows {
		if !isCrossSite(w.Path) {
			continue
		}
		a := &CrossSiteArgs{SubmitModelTimeout: 600, ValidationTimeout: 6000, SubmitModelTaskName: "submit_model",
			ValidationTaskName: "validate", WaitForClientsTimeout: 300, CrossValDir: "cross_site_val"}
		if len(w.Args) > 0 {
			if err := json.Unmarshal(w.Args, a); err != nil {
				return nil, fmt.Errorf("workflow %s args: %w", w.ID, err)
			}
		}
		if a.SubmitModelTimeout < 0 || a.ValidationTimeout < 0 || a.WaitForClientsTimeout < 0 || a.ValidationTaskName == "" {
			return nil, fmt.Errorf("workflow %s: timeouts must be >= 0 and validation_task_name set", w.ID)
		}
		if a.CrossValDir == "" || filepath.IsAbs(a.CrossValDir) || !filepath.IsLocal(a.CrossValDir) {
			return nil, fmt.Errorf("workflow %s: cross_val_dir %q must be a relative folder inside the run", w.ID, a.CrossValDir)
		}
		if a.ModelLocatorID != "" {
			loc, err := c.Component(a.ModelLocatorID)
			if err != nil {
				return nil, fmt.Errorf("workflow %s: %w", w.ID, err)
			}
			if loc.Path != PathPTFileModelLocator {
				return nil, fmt.Errorf("model locator %q: %w", loc.Path, ErrNotImplemented)
			}
		}
		return a, nil
	}
	return nil, nil
}
