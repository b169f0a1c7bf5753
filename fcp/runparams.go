package fcp

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/flarego/flarego/persistor"
)

// RunParamsName is FCP's run parameters file in Input: the
// hyper-parameters a user sets for one run ({"epochs": 2, "lr": 0.001}).
const RunParamsName = "run_params.json"

// maxRunParams bounds the file; FCP's run parameters are a few lines.
const maxRunParams = 1 << 20

// RunParams are the hyper-parameters of Input/run_params.json that
// override the job config (and train's defaults); nil where the file does
// not set them. Other keys are FCP's own and are listed in Ignored.
type RunParams struct {
	Path    string // the file read; "" when there is none
	Epochs  *int
	LR      *float64
	Batch   *int // "batch" or "batch_size"
	Ignored []string
}

// RunParams reads Input/run_params.json. A missing file gives empty
// RunParams; a file that is not a JSON object, or a hyper-parameter of
// the wrong type or out of range, is an error naming the file and key.
func (l Locations) RunParams() (RunParams, error) {
	path := filepath.Join(l.Input, RunParamsName)
	f, err := persistor.OpenRegular(path)
	if errors.Is(err, fs.ErrNotExist) {
		return RunParams{}, nil
	}
	if err != nil {
		return RunParams{}, fmt.Errorf("FCP run parameters: %w", err)
	}
	defer f.Close()
	raw, err := io.ReadAll(io.LimitReader(f, maxRunParams+1))
	if err != nil {
		return RunParams{}, fmt.Errorf("FCP run parameters %s: %w", path, err)
	}
	if len(raw) > maxRunParams {
		return RunParams{}, fmt.Errorf("FCP run parameters %s: over %d KiB", path, maxRunParams>>10)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return RunParams{}, fmt.Errorf("FCP run parameters %s: not a JSON object: %v", path, err)
	}
	p := RunParams{Path: path}
	bad := func(key, want string) error {
		return fmt.Errorf("FCP run parameters %s: %q is %s, want %s", path, key, bytes.TrimSpace(m[key]), want)
	}
	for key, v := range m {
		switch key {
		case "epochs", "batch", "batch_size":
			var n float64
			if json.Unmarshal(v, &n) != nil || n != math.Trunc(n) || n < 1 || n > 1e6 {
				return RunParams{}, bad(key, "a whole number from 1 to 1000000")
			}
			i := int(n)
			if key == "epochs" {
				p.Epochs = &i
			} else {
				if p.Batch != nil {
					return RunParams{}, fmt.Errorf("FCP run parameters %s: both batch and batch_size", path)
				}
				p.Batch = &i
			}
		case "lr":
			var x float64
			if json.Unmarshal(v, &x) != nil || !(x > 0) || x > 10 {
				return RunParams{}, bad(key, "a learning rate above 0 and at most 10")
			}
			p.LR = &x
		default:
			p.Ignored = append(p.Ignored, key)
		}
	}
	sort.Strings(p.Ignored)
	return p, nil
}

// String lists what the file sets, for the log: "epochs=2 lr=0.001 (from
// /input/run_params.json; not hyper-parameters, left to FCP: "seed")".
func (p RunParams) String() string {
	if p.Path == "" {
		return "no run parameters"
	}
	var s []string
	if p.Epochs != nil {
		s = append(s, fmt.Sprintf("epochs=%d", *p.Epochs))
	}
	if p.LR != nil {
		s = append(s, fmt.Sprintf("lr=%g", *p.LR))
	}
	if p.Batch != nil {
		s = append(s, fmt.Sprintf("batch=%d", *p.Batch))
	}
	if len(s) == 0 {
		s = append(s, "no hyper-parameters")
	}
	out := strings.Join(s, " ") + " (from " + p.Path
	if len(p.Ignored) > 0 {
		q := make([]string, len(p.Ignored))
		for i, k := range p.Ignored {
			q[i] = strconv.Quote(k) // a key is the file's: quoted, it cannot forge a log line
		}
		out += "; not hyper-parameters, left to FCP: " + strings.Join(q, ", ")
	}
	return out + ")"
}
