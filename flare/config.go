package flare

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"

	"github.com/flarego/flarego/persistor"
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

	// WorkflowID is the workflow's id in the config (the tasks' cookie).
	WorkflowID string `json:"-"`
	// FedAvg is set for NVFlare's FedAvg controller (see fedAvg): no
	// aggregator or shareable generator components, every result of a
	// round waited for, AggregationWeights by site.
	FedAvg             bool               `json:"-"`
	AggregationWeights map[string]float64 `json:"-"`
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
	b, err := persistor.ReadRegular(path, maxConfigBytes, "a configuration file (a few KiB)")
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
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
	if isFedAvg(c.Workflows[0].Path) {
		for _, w := range c.Workflows[1:] {
			return nil, fmt.Errorf("workflow %s after FedAvg: %w", w.ID, ErrNotImplemented)
		}
		return c.fedAvg()
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
	a.WorkflowID = w.ID
	return a, nil
}

// fedAvgArgs are the arguments of NVFlare 2.5+'s FedAvg controller (what
// the Recipe API's FedAvg recipes export), with NVFlare's defaults.
type fedAvgArgs struct {
	NumClients         *int               `json:"num_clients"`
	NumRounds          *int               `json:"num_rounds"`
	StartRound         int                `json:"start_round"`
	PersistorID        string             `json:"persistor_id"`
	TaskName           string             `json:"task_name"`
	AggregationWeights map[string]float64 `json:"aggregation_weights"`
	// Not implemented when set: the initial model as an argument, a custom
	// aggregator, early stopping, excluded variables, a result policy.
	Model             json.RawMessage `json:"model"`
	Aggregator        json.RawMessage `json:"aggregator"`
	StopCond          json.RawMessage `json:"stop_cond"`
	Patience          json.RawMessage `json:"patience"`
	ExcludeVars       json.RawMessage `json:"exclude_vars"`
	IgnoreResultError json.RawMessage `json:"ignore_result_error"`
	// Taken and without effect here.
	SaveFilename            string  `json:"save_filename"`
	MemoryGCRounds          int     `json:"memory_gc_rounds"`
	TaskCheckPeriod         float64 `json:"task_check_period"`
	AllowEmptyGlobalWeights bool    `json:"allow_empty_global_weights"`
	EnableTensorDiskOffload bool    `json:"enable_tensor_disk_offload"`
}

// fedAvg maps NVFlare's FedAvg onto the rounds the runtime runs: each
// round the model goes to every site of the job (flarego does not sample
// num_clients of them; num_clients is the fewest results a round needs),
// every live site's result is waited for, and the mean is weighted by the
// site's aggregation weight (default 1) times its NUM_STEPS_CURRENT_ROUND
// (default 1); the persistor saves the model every round.
func (c *ServerConfig) fedAvg() (*ScatterAndGatherArgs, error) {
	w := c.Workflows[0]
	var a fedAvgArgs
	if len(w.Args) > 0 {
		dec := json.NewDecoder(strings.NewReader(string(w.Args)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&a); err != nil {
			return nil, fmt.Errorf("workflow %s (FedAvg) args: %w", w.ID, err)
		}
	}
	for name, raw := range map[string]json.RawMessage{"model": a.Model, "aggregator": a.Aggregator, "stop_cond": a.StopCond,
		"patience": a.Patience, "exclude_vars": a.ExcludeVars, "ignore_result_error": a.IgnoreResultError} {
		if len(raw) > 0 && string(raw) != "null" {
			return nil, fmt.Errorf("workflow %s (FedAvg): argument %s: %w (give the initial model to the persistor)", w.ID, name, ErrNotImplemented)
		}
	}
	out := &ScatterAndGatherArgs{MinClients: 3, NumRounds: 5, StartRound: a.StartRound, PersistorID: a.PersistorID,
		TrainTaskName: a.TaskName, WorkflowID: w.ID, FedAvg: true, AggregationWeights: a.AggregationWeights}
	if a.NumClients != nil {
		out.MinClients = *a.NumClients
	}
	if a.NumRounds != nil {
		out.NumRounds = *a.NumRounds
	}
	if out.PersistorID == "" {
		out.PersistorID = "persistor"
	}
	if out.TrainTaskName == "" {
		out.TrainTaskName = "train"
	}
	for site, wt := range a.AggregationWeights {
		if math.IsNaN(wt) || math.IsInf(wt, 0) || wt <= 0 || wt > 1e6 {
			return nil, fmt.Errorf("workflow %s (FedAvg): aggregation weight %v of %s (more than 0, at most 1e6)", w.ID, wt, LogSafe(site))
		}
	}
	if out.MinClients < 1 || out.NumRounds < 1 || out.StartRound < 0 || out.NumRounds > 1<<20 {
		return nil, fmt.Errorf("workflow %s (FedAvg): bad num_clients/num_rounds/start_round", w.ID)
	}
	// The runtime counts rounds up to NumRounds; FedAvg runs num_rounds
	// rounds from start_round.
	out.NumRounds += out.StartRound
	return out, nil
}

func isFedAvg(path string) bool { return path == PathFedAvg || path == "FedAvg" }

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

// The --set keys NVFlare's server_train and client_train take for
// themselves (the startup, not the job); a server's other keys are
// workflow arguments.
var (
	serverSetKeys = []string{"secure_train", "config_folder"}
	clientSetKeys = []string{"uid", "secure_train", "config_folder", "org"}
)

// ServerSetKeys are the --set keys a server takes for itself:
// secure_train, config_folder.
func ServerSetKeys() []string { return slices.Clone(serverSetKeys) }

// ClientSetKeys are the --set keys a client takes: uid, secure_train,
// config_folder.
func ClientSetKeys() []string { return slices.Clone(clientSetKeys) }

// ParseSets reads NVFlare's --set words, each key=value, into a map (a
// later word for a key wins). A word without "=" is an error.
func ParseSets(words []string) (map[string]string, error) {
	sets := map[string]string{}
	for _, s := range words {
		k, v, ok := strings.Cut(s, "=")
		if !ok {
			return nil, fmt.Errorf("%q is not key=value", s)
		}
		sets[k] = v
	}
	return sets, nil
}

// SetWorkflowArgs applies --set key=value words to the workflows'
// arguments, in order, as SetWorkflowArg does (e.g.
// wait_time_after_min_received=0); the first that fails stops it.
func (c *ServerConfig) SetWorkflowArgs(words []string) error {
	for _, s := range words {
		k, v, ok := strings.Cut(s, "=")
		if !ok {
			return fmt.Errorf("--set %q is not key=value", s)
		}
		if err := c.SetWorkflowArg(k, v); err != nil {
			return err
		}
	}
	return nil
}

// CheckSetKeys refuses --set keys that are neither one of own (a command's
// startup keys) nor a workflow argument, naming both lists, so that a
// misspelt key fails before anything starts.
func CheckSetKeys(sets map[string]string, own ...string) error {
	for k := range sets {
		if !slices.Contains(own, k) && !slices.Contains(WorkflowArgKeys(), k) {
			return fmt.Errorf("--set %s: unknown key (known: %s; workflow arguments: %s)", k,
				strings.Join(own, ", "), strings.Join(WorkflowArgKeys(), ", "))
		}
	}
	return nil
}

// ServerSets checks a server's --set pairs (CheckSetKeys with
// ServerSetKeys) and returns those that are workflow arguments, as
// key=value words for SetWorkflowArgs on each job the server runs.
func ServerSets(sets map[string]string) (workflow []string, err error) {
	if err := CheckSetKeys(sets, serverSetKeys...); err != nil {
		return nil, err
	}
	for k, v := range sets {
		if !slices.Contains(serverSetKeys, k) {
			workflow = append(workflow, k+"="+v)
		}
	}
	sort.Strings(workflow)
	return workflow, nil
}

// CheckClientSets refuses --set keys a client does not take (it has no
// workflow arguments: those are the server's).
func CheckClientSets(sets map[string]string) error {
	for k := range sets {
		if !slices.Contains(clientSetKeys, k) {
			return fmt.Errorf("--set %s: unknown key for a client (known: %s)", k, strings.Join(clientSetKeys, ", "))
		}
	}
	return nil
}
