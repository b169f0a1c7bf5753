package pickle

import "github.com/nlpodyssey/gopickle/types"

// Stand-ins. A value in [Unpickler.Allowed] stands for its global while the
// pickle is built, and receives what the pickle passes to it as gopickle
// built it, before [Convert]: tuples as *[GoTuple], dicts as *[GoDict],
// other stand-ins as themselves. These names are the whole of gopickle that
// callers need; no package but this one imports gopickle.

// GoTuple is a tuple as a stand-in receives it (as *GoTuple).
type GoTuple = types.Tuple

// GoDict is a dict as a stand-in receives it (as *GoDict): its entries in
// insertion order.
type GoDict = types.Dict

// GoDictEntry is one entry of a GoDict.
type GoDictEntry = types.DictEntry

// The hooks a stand-in may implement, each for the opcodes that use it.
type (
	// Callable is a function or class called with REDUCE.
	Callable = types.Callable
	// PyNewable is a class instantiated with NEWOBJ (cls.__new__(cls, *args)).
	PyNewable = types.PyNewable
	// DictSetter is an instance filled with SETITEM and SETITEMS (a dict
	// subclass).
	DictSetter = types.DictSetter
	// PyStateSettable is an instance given its state with BUILD
	// (__setstate__).
	PyStateSettable = types.PyStateSettable
)

// Func makes a Go function a Callable stand-in.
type Func func(args ...any) (any, error)

// Call calls f.
func (f Func) Call(args ...any) (any, error) { return f(args...) }
