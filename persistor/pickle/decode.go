package pickle

import (
	"bytes"
	"errors"
	"fmt"
	"math/big"
	"sort"

	gopickle "github.com/nlpodyssey/gopickle/pickle"
	"github.com/nlpodyssey/gopickle/types"
)

// ErrForbidden reports a pickle that names a global outside the allowlist.
var ErrForbidden = errors.New("pickle names a global that is not allowed")

// DefaultMaxBytes bounds one pickle unless the Unpickler says otherwise.
const DefaultMaxBytes = 64 << 20

// DefaultMaxValues bounds, unless the Unpickler says otherwise, both the
// values one pickle builds and the values its result holds when walked as a
// tree. The pneumonia model's state dict (18 tensors) takes 436 and its
// Shareable 665; 200 clients' results of 18 arrays each some 30,000. At the
// limit, a pickle of 256 KiB of EMPTY_DICT opcodes (the costliest value per
// byte) makes gopickle hold about 55 MB and allocate 100 MB in all.
const DefaultMaxValues = 1 << 18

// maxDepth bounds the nesting of containers (and so cycles).
const maxDepth = 200

// An Unpickler reads pickles that may come from an attacker.
type Unpickler struct {
	// Allowed maps each permitted global to the Go value that stands for it
	// (usually a [Func]; see [Callable] and the other hooks). Any other
	// global is refused before a single object is built.
	Allowed map[Global]any
	// PersistentLoad resolves persistent ids (torch storages); nil refuses them.
	PersistentLoad func(pid any) (any, error)
	// MaxBytes bounds the pickle's length; 0 means DefaultMaxBytes.
	MaxBytes int
	// MaxValues bounds, each on its own, the values the pickle builds (every
	// object, memo reference pushed and memo entry stored), the values of its
	// result walked as a tree, where a subtree shared through the memo counts
	// each time it is reached, and the values it passes to the objects it rebuilds
	// (REDUCE, NEWOBJ, BUILD and persistent ids, all calls together, counted
	// the same way); 0 means DefaultMaxValues. All are checked on the
	// opcodes, before anything is built.
	MaxValues int
	// MaxValueBytes bounds the string and bytes content of the result, and of
	// what it passes to the objects it rebuilds, counted as MaxValues counts;
	// 0 means DefaultValueBytes(len(pickle)).
	MaxValueBytes int64
}

// DefaultValueBytes is the content a pickle of n bytes may stand for unless
// the Unpickler says otherwise: four times its length, plus 1 MiB. Real
// pickles hold each string once (NVFlare's and torch's share only short
// keys), so they stay close to 1×.
func DefaultValueBytes(n int) int64 { return 4*int64(n) + 1<<20 }

// Unpickle reads the pickle at the start of data and returns its value and
// the number of bytes it took.
func (u *Unpickler) Unpickle(data []byte) (v any, n int, err error) {
	max := u.MaxBytes
	if max == 0 {
		max = DefaultMaxBytes
	}
	lim := limits{Values: u.MaxValues, ValueBytes: u.MaxValueBytes}
	n, err = scan(data, max, func(g Global) bool {
		_, ok := u.Allowed[g]
		return ok
	}, lim)
	if err != nil {
		return nil, 0, err
	}
	if lim.Values <= 0 {
		lim.Values = DefaultMaxValues
	}
	defer func() {
		if r := recover(); r != nil {
			v, n, err = nil, 0, fmt.Errorf("pickle: malformed (%v)", r)
		}
	}()
	up := gopickle.NewUnpickler(bytes.NewReader(data[:n]))
	up.FindClass = func(module, name string) (any, error) {
		if s, ok := u.Allowed[Global{module, name}]; ok {
			return s, nil
		}
		return nil, fmt.Errorf("%w: %s.%s", ErrForbidden, module, name)
	}
	pids := &budget{left: lim.Values} // for all persistent ids together
	up.PersistentLoad = func(pid any) (any, error) {
		if u.PersistentLoad == nil {
			return nil, errors.New("pickle: persistent ids are not allowed here")
		}
		id, err := convert(pid, 0, pids)
		if err != nil {
			return nil, err
		}
		return u.PersistentLoad(id)
	}
	up.GetExtension = func(code int) (any, error) {
		return nil, fmt.Errorf("%w: extension code %d", ErrForbidden, code)
	}
	raw, err := up.Load()
	if err != nil {
		return nil, 0, fmt.Errorf("pickle: %w", err)
	}
	v, err = convert(raw, 0, &budget{left: lim.Values})
	if err != nil {
		return nil, 0, err
	}
	return v, n, nil
}

// Convert turns values gopickle built (for instance those a caller's
// stand-in object received through SETITEMS or BUILD) into this package's
// values; other types are returned as they are. It visits at most
// DefaultMaxValues values: a value that shares subtrees is copied once for
// each time it reaches them.
func Convert(v any) (any, error) { return convert(v, 0, &budget{left: DefaultMaxValues}) }

// A budget counts the values a conversion may still make.
type budget struct{ left int }

func convert(v any, depth int, b *budget) (any, error) {
	if depth > maxDepth {
		return nil, errors.New("pickle: nested too deeply (or self-referencing)")
	}
	if b.left--; b.left < 0 {
		return nil, errTooManyValues
	}
	switch v := v.(type) {
	case int:
		return int64(v), nil
	case *big.Int:
		if v.IsInt64() {
			return v.Int64(), nil
		}
		return v, nil
	case *types.Tuple:
		return convertSlice(Tuple(*v), depth, b)
	case *types.List:
		l, err := convertSlice([]any(*v), depth, b)
		return List(l), err
	case *types.Dict:
		d := &Dict{Items: make([]Item, 0, len(*v))}
		for _, e := range *v {
			if err := d.appendConverted(e.Key, e.Value, depth, b); err != nil {
				return nil, err
			}
		}
		return d, nil
	case *types.OrderedDict:
		d := &OrderedDict{}
		od := &Dict{Items: make([]Item, 0, v.Len())}
		for el := v.List.Front(); el != nil; el = el.Next() {
			e := el.Value.(*types.OrderedDictEntry)
			if err := od.appendConverted(e.Key, e.Value, depth, b); err != nil {
				return nil, err
			}
		}
		d.Items = od.Items
		if len(v.PyDict) > 0 {
			names := make([]string, 0, len(v.PyDict))
			for k := range v.PyDict {
				names = append(names, k)
			}
			sort.Strings(names)
			d.State = &Dict{}
			for _, k := range names {
				val, err := convert(v.PyDict[k], depth+1, b)
				if err != nil {
					return nil, err
				}
				d.State.Items = append(d.State.Items, Item{k, val})
			}
		}
		return d, nil
	case *types.GenericClass, *types.GenericObject, *types.ObjectClass, *types.Reconstructor,
		*types.Set, *types.FrozenSet, *types.ByteArray, *types.OrderedDictClass:
		return nil, fmt.Errorf("pickle: unsupported object %T", v)
	}
	return v, nil
}

func (d *Dict) appendConverted(key, value any, depth int, b *budget) error {
	k, err := convert(key, depth+1, b)
	if err != nil {
		return err
	}
	val, err := convert(value, depth+1, b)
	if err != nil {
		return err
	}
	d.Items = append(d.Items, Item{k, val})
	return nil
}

func convertSlice(s []any, depth int, b *budget) (Tuple, error) {
	out := make(Tuple, len(s))
	for i, x := range s {
		c, err := convert(x, depth+1, b)
		if err != nil {
			return nil, err
		}
		out[i] = c
	}
	return out, nil
}

// Argument layouts of the opcodes, for Scan.
const (
	argNone = iota
	argFixed
	argLen1    // 1-byte length, then data
	argLen4    // 4-byte length, then data
	argLen8    // 8-byte length, then data
	argLine    // one text line
	argLine2   // two text lines (a global)
	argFrame   // 8-byte frame length
	argUnknown // not an opcode
)

type opInfo struct {
	kind  int
	fixed int
}

var ops [256]opInfo

func init() {
	for i := range ops {
		ops[i] = opInfo{kind: argUnknown}
	}
	for _, c := range []byte("(.012NRabd}el]ostu)Q\x81\x85\x86\x87\x88\x89\x8f\x90\x91\x92\x93\x94\x97\x98") {
		ops[c] = opInfo{kind: argNone}
	}
	for c, n := range map[byte]int{0x80: 1, 'K': 1, 'h': 1, 'q': 1, 0x82: 1, 'M': 2, 0x83: 2,
		'J': 4, 'j': 4, 'r': 4, 0x84: 4, 'G': 8} {
		ops[c] = opInfo{kind: argFixed, fixed: n}
	}
	for _, c := range []byte{0x8a, 'U', 'C', 0x8c} {
		ops[c] = opInfo{kind: argLen1}
	}
	for _, c := range []byte{'T', 'X', 'B', 0x8b} {
		ops[c] = opInfo{kind: argLen4}
	}
	for _, c := range []byte{0x8d, 0x8e, 0x96} {
		ops[c] = opInfo{kind: argLen8}
	}
	for _, c := range []byte("ILFSVPgp") {
		ops[c] = opInfo{kind: argLine}
	}
	ops['c'] = opInfo{kind: argLine2}
	ops['i'] = opInfo{kind: argLine2}
	ops[0x95] = opInfo{kind: argFrame}
}
