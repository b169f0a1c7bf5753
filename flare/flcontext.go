package flare

// FLContext is the public part of NVFlare's FLContext that travels with
// tasks: name → (value, mask).
type FLContext struct {
	Props  []Prop
	Logger string // logging.getLogger's name, "FLContext" as NVFlare pickles it
}

// Prop is one FLContext property.
type Prop struct {
	Name  string
	Value any
	Mask  int64 // NVFlare's sticky/private bits; 1 = public and sticky
}

// Get returns a property's value.
func (c *FLContext) Get(name string) (any, bool) {
	for _, p := range c.Props {
		if p.Name == name {
			return p.Value, true
		}
	}
	return nil, false
}
