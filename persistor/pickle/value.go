// Package pickle reads and writes the subset of Python's pickle format that
// model files and NVFlare messages use, without ever executing anything.
//
// Reading goes through github.com/nlpodyssey/gopickle behind a guard:
// [Unpickler.Unpickle] first walks the opcodes ([Scan]) to check lengths,
// limits and every global against an allowlist, and runs them on the shape
// of the values alone, so that memo references to nothing, integers too long
// to parse cheaply, and pickles that build or stand for too many values or
// bytes (a few hundred bytes of shared tuples can stand for 2^80 values) are
// refused before anything is built; then it lets gopickle build the
// objects, and finally converts them into this package's plain values
// (None→nil, bool, int64 or *big.Int, float64, string, []byte, [Tuple],
// [List], [*Dict], [*OrderedDict]). Anything else must be a stand-in the
// caller registered for an allowlisted global: a [Func] or a value with the
// hooks [Callable], [PyNewable], [DictSetter] or [PyStateSettable], which
// receives what the pickle passes it as gopickle built it ([GoTuple],
// [GoDict]). This package is the only one that imports gopickle.
//
// Writing is ours, since gopickle only reads: [Encoder] writes protocol 2
// exactly as CPython's pickler does for the same objects (memo numbering
// included), which is what torch.save writes and what torch.load with
// weights_only=True accepts.
package pickle

import "fmt"

// Tuple is a Python tuple.
type Tuple []any

// List is a Python list.
type List []any

// Item is one key/value pair of a dict, in insertion order.
type Item struct {
	Key, Value any
}

// Dict is a Python dict, keeping insertion order as Python does.
type Dict struct {
	Items []Item
}

// OrderedDict is a collections.OrderedDict. State, when not nil, is the
// object's __dict__ (torch keeps a state dict's _metadata there).
type OrderedDict struct {
	Items []Item
	State *Dict
}

// Global names a Python module-level object, such as torch.FloatStorage.
type Global struct {
	Module, Name string
}

func (g Global) String() string { return g.Module + "." + g.Name }

// Reduce is an object Python rebuilds by calling Func(*Args), then, when
// State is not nil, restoring State with BUILD.
type Reduce struct {
	Func  Global
	Args  Tuple
	State any
}

// Object is an instance Python rebuilds with cls.__new__(cls, *Args)
// (NEWOBJ), then fills with Items (a dict subclass's entries, SETITEMS) and
// State (BUILD) — how protocol ≥ 2 pickles instances such as NVFlare's
// Shareable and FLContext.
type Object struct {
	Class Global
	Args  Tuple
	Items []Item
	State any
}

// PersistentID is written as its ID followed by BINPERSID; the loader's
// persistent_load turns it back into the object (torch's storages).
type PersistentID struct {
	ID any
}

// Get returns the value for a string key.
func (d *Dict) Get(key string) (any, bool) { return getItem(d.Items, key) }

// Set replaces the value of key, or appends it.
func (d *Dict) Set(key, value any) { d.Items = setItem(d.Items, key, value) }

// Get returns the value for a string key.
func (d *OrderedDict) Get(key string) (any, bool) { return getItem(d.Items, key) }

// Set replaces the value of key, or appends it.
func (d *OrderedDict) Set(key, value any) { d.Items = setItem(d.Items, key, value) }

func getItem(items []Item, key string) (any, bool) {
	for _, it := range items {
		if k, ok := it.Key.(string); ok && k == key {
			return it.Value, true
		}
	}
	return nil, false
}

func setItem(items []Item, key, value any) []Item {
	for i, it := range items {
		if it.Key == key {
			items[i].Value = value
			return items
		}
	}
	return append(items, Item{key, value})
}

// TypeName names v's Python type for error messages.
func TypeName(v any) string {
	switch v.(type) {
	case nil:
		return "None"
	case bool:
		return "bool"
	case int, int64:
		return "int"
	case float64:
		return "float"
	case string:
		return "str"
	case []byte:
		return "bytes"
	case Tuple:
		return "tuple"
	case List:
		return "list"
	case *Dict:
		return "dict"
	case *OrderedDict:
		return "collections.OrderedDict"
	}
	return fmt.Sprintf("%T", v)
}
