package np

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/npy"
	"github.com/flarego/flarego/persistor"
)

// PersistorPath is NPModelPersistor's component path.
const PersistorPath = "nvflare.app_common.np.np_model_persistor.NPModelPersistor"

// PersistorArgs are NPModelPersistor's arguments, with NVFlare's defaults.
type PersistorArgs struct {
	ModelDir  string      `json:"model_dir"`
	ModelName string      `json:"model_name"`
	Model     [][]float32 `json:"model"`
}

// A Persistor is NVFlare's NPModelPersistor: the global model is one
// array, numpy_key, kept as RUN_DIR/model_dir/model_name (server.npy).
// Load takes the saved one if there is one, else the args' model, else
// [[1,2,3],[4,5,6],[7,8,9]] (float32), as NVFlare does.
type Persistor struct {
	Path  string // the .npy file
	Model *persistor.Tensor
}

// maxNPYBytes bounds the saved model read back (a hello-numpy model is
// a few bytes; 1 GiB leaves room for real ones).
const maxNPYBytes = 1 << 30

// NewPersistor builds a Persistor for a run folder from the component's args.
func NewPersistor(runDir string, raw json.RawMessage) (*Persistor, error) {
	a := PersistorArgs{ModelDir: "models", ModelName: "server.npy"}
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &a); err != nil {
			return nil, fmt.Errorf("%s args: %w", PersistorPath, err)
		}
	}
	for _, n := range []struct{ what, v string }{{"model_dir", a.ModelDir}, {"model_name", a.ModelName}} {
		if err := flare.CheckPathName(PersistorPath+" "+n.what, n.v); err != nil {
			return nil, err
		}
	}
	rows := a.Model
	if rows == nil {
		rows = [][]float32{{1, 2, 3}, {4, 5, 6}, {7, 8, 9}}
	}
	var flat []float32
	for _, r := range rows {
		if len(r) != len(rows[0]) {
			return nil, fmt.Errorf("%s args: model rows differ in length", PersistorPath)
		}
		flat = append(flat, r...)
	}
	shape := []int{len(rows), 0}
	if len(rows) > 0 {
		shape[1] = len(rows[0])
	}
	return &Persistor{Path: filepath.Join(runDir, a.ModelDir, a.ModelName), Model: persistor.FromFloat32(flat, shape...)}, nil
}

// Load returns the saved model, or the initial one.
func (p *Persistor) Load() (*persistor.Checkpoint, error) {
	t := p.Model
	b, err := persistor.ReadRegular(p.Path, maxNPYBytes, "a numpy model")
	switch {
	case err == nil:
		if t, err = npy.Decode(b); err != nil {
			return nil, fmt.Errorf("%s: %w", p.Path, err)
		}
	case !errors.Is(err, fs.ErrNotExist):
		return nil, err
	}
	sd := persistor.NewStateDict()
	sd.Set(Key, t)
	return &persistor.Checkpoint{Model: sd}, nil
}

// Save writes the model's numpy_key, atomically.
func (p *Persistor) Save(c *persistor.Checkpoint) error {
	t := c.Model.Get(Key)
	if t == nil {
		return fmt.Errorf("%s: the model has no %s", PersistorPath, Key)
	}
	b, err := npy.Encode(t)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p.Path), 0o755); err != nil {
		return err
	}
	return persistor.WriteFileAtomic(p.Path, 0o644, func(w io.Writer) error { _, err := w.Write(b); return err })
}

// RegisterPersistor adds NPModelPersistor to r, keeping its model in runDir.
func RegisterPersistor(r *flare.Registry, runDir string) {
	if r.Persistors == nil {
		r.Persistors = map[string]func(json.RawMessage) (flare.ModelPersistor, error){}
	}
	r.Persistors[PersistorPath] = func(raw json.RawMessage) (flare.ModelPersistor, error) { return NewPersistor(runDir, raw) }
}
