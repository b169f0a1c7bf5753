package persistor

import (
	"errors"
	"fmt"

	"github.com/flarego/flarego/persistor/pickle"
)

// A Checkpoint is NVFlare's persistence layout of a PyTorch model:
// OrderedDict{"model": state dict, "meta_props": {...} (only when non-empty),
// "train_conf": {"train": {"model": <class name>}}, then any other keys}.
type Checkpoint struct {
	Model     *StateDict
	MetaProps *pickle.Dict // nil or empty: not written
	TrainConf any          // nil: {"train": {"model": ModelName}}
	ModelName string       // used for the default TrainConf
	Extra     []pickle.Item
	// Bare records that the file held a state dict alone, not the layout.
	Bare bool
}

// value returns the object torch.save would be given.
func (c *Checkpoint) value() any {
	if c.Bare {
		return c.Model
	}
	od := &pickle.OrderedDict{}
	od.Set("model", c.Model)
	if c.MetaProps != nil && len(c.MetaProps.Items) > 0 {
		od.Set("meta_props", c.MetaProps)
	}
	tc := c.TrainConf
	if tc == nil {
		name := c.ModelName
		if name == "" {
			name = "PneumoniaModel"
		}
		tc = &pickle.Dict{Items: []pickle.Item{{Key: "train", Value: &pickle.Dict{Items: []pickle.Item{{Key: "model", Value: name}}}}}}
	}
	od.Set("train_conf", tc)
	for _, it := range c.Extra {
		od.Set(it.Key, it.Value)
	}
	return od
}

// CheckpointOf interprets a decoded .pt: NVFlare's layout, or a bare state
// dict (an OrderedDict or dict of tensors).
func CheckpointOf(v any) (*Checkpoint, error) {
	items, ok := dictItems(v)
	if !ok {
		return nil, fmt.Errorf("top level is a %s, not a dict", pickle.TypeName(v))
	}
	if m, ok := findItem(items, "model"); ok {
		if _, isTensor := m.(*Tensor); !isTensor {
			sd, err := stateDictOf(m)
			if err != nil {
				return nil, fmt.Errorf("\"model\": %w", err)
			}
			c := &Checkpoint{Model: sd}
			for _, it := range items {
				switch it.Key {
				case "model":
				case "meta_props":
					if d, ok := it.Value.(*pickle.Dict); ok {
						c.MetaProps = d
					} else if od, ok := it.Value.(*pickle.OrderedDict); ok {
						c.MetaProps = &pickle.Dict{Items: od.Items}
					} else {
						return nil, fmt.Errorf("\"meta_props\" is a %s, not a dict", pickle.TypeName(it.Value))
					}
				case "train_conf":
					c.TrainConf = it.Value
				default:
					c.Extra = append(c.Extra, it)
				}
			}
			return c, nil
		}
	}
	sd, err := stateDictOf(v)
	if err != nil {
		return nil, err
	}
	return &Checkpoint{Model: sd, Bare: true}, nil
}

func dictItems(v any) ([]pickle.Item, bool) {
	switch d := v.(type) {
	case *pickle.OrderedDict:
		return d.Items, true
	case *pickle.Dict:
		return d.Items, true
	}
	return nil, false
}

func findItem(items []pickle.Item, key string) (any, bool) {
	for _, it := range items {
		if it.Key == key {
			return it.Value, true
		}
	}
	return nil, false
}

func stateDictOf(v any) (*StateDict, error) {
	items, ok := dictItems(v)
	if !ok {
		return nil, fmt.Errorf("state dict is a %s, not a dict", pickle.TypeName(v))
	}
	sd := NewStateDict()
	if od, ok := v.(*pickle.OrderedDict); ok {
		sd.Attrs = od.State
	}
	for _, it := range items {
		name, ok := it.Key.(string)
		if !ok {
			return nil, fmt.Errorf("state dict key %v is not a string", it.Key)
		}
		t, ok := it.Value.(*Tensor)
		if !ok {
			return nil, fmt.Errorf("state dict entry %q is a %s, not a tensor", name, pickle.TypeName(it.Value))
		}
		if sd.Get(name) != nil {
			return nil, fmt.Errorf("state dict key %q appears twice", name)
		}
		sd.Set(name, t)
	}
	if sd.Len() == 0 {
		return nil, errors.New("state dict is empty")
	}
	return sd, nil
}

// DecodeCheckpoint decodes a .pt (DecodePT) and interprets it (CheckpointOf).
func DecodeCheckpoint(data []byte) (*Checkpoint, error) {
	v, err := DecodePT(data)
	if err != nil {
		return nil, err
	}
	return CheckpointOf(v)
}
