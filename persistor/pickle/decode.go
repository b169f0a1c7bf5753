package pickle

import (
	"bytes"
	"encoding/binary"
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

// maxDepth bounds the nesting of containers (and so cycles).
const maxDepth = 200

// An Unpickler reads pickles that may come from an attacker.
type Unpickler struct {
	// Allowed maps each permitted global to the Go value that stands for it
	// (usually a types.Callable). Any other global is refused before a single
	// object is built.
	Allowed map[Global]any
	// PersistentLoad resolves persistent ids (torch storages); nil refuses them.
	PersistentLoad func(pid any) (any, error)
	// MaxBytes bounds the pickle's length; 0 means DefaultMaxBytes.
	MaxBytes int
}

// Unpickle reads the pickle at the start of data and returns its value and
// the number of bytes it took.
func (u *Unpickler) Unpickle(data []byte) (v any, n int, err error) {
	max := u.MaxBytes
	if max == 0 {
		max = DefaultMaxBytes
	}
	n, err = Scan(data, max, func(g Global) bool {
		_, ok := u.Allowed[g]
		return ok
	})
	if err != nil {
		return nil, 0, err
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
	up.PersistentLoad = func(pid any) (any, error) {
		if u.PersistentLoad == nil {
			return nil, errors.New("pickle: persistent ids are not allowed here")
		}
		id, err := convert(pid, 0)
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
	v, err = convert(raw, 0)
	if err != nil {
		return nil, 0, err
	}
	return v, n, nil
}

// Convert turns values gopickle built (for instance those a caller's
// stand-in object received through SETITEMS or BUILD) into this package's
// values; other types are returned as they are.
func Convert(v any) (any, error) { return convert(v, 0) }

func convert(v any, depth int) (any, error) {
	if depth > maxDepth {
		return nil, errors.New("pickle: nested too deeply (or self-referencing)")
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
		return convertSlice(Tuple(*v), depth)
	case *types.List:
		l, err := convertSlice([]any(*v), depth)
		return List(l), err
	case *types.Dict:
		d := &Dict{Items: make([]Item, 0, len(*v))}
		for _, e := range *v {
			if err := d.appendConverted(e.Key, e.Value, depth); err != nil {
				return nil, err
			}
		}
		return d, nil
	case *types.OrderedDict:
		d := &OrderedDict{}
		od := &Dict{Items: make([]Item, 0, v.Len())}
		for el := v.List.Front(); el != nil; el = el.Next() {
			e := el.Value.(*types.OrderedDictEntry)
			if err := od.appendConverted(e.Key, e.Value, depth); err != nil {
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
				val, err := convert(v.PyDict[k], depth+1)
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

func (d *Dict) appendConverted(key, value any, depth int) error {
	k, err := convert(key, depth+1)
	if err != nil {
		return err
	}
	val, err := convert(value, depth+1)
	if err != nil {
		return err
	}
	d.Items = append(d.Items, Item{k, val})
	return nil
}

func convertSlice(s []any, depth int) (Tuple, error) {
	out := make(Tuple, len(s))
	for i, x := range s {
		c, err := convert(x, depth+1)
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
	for _, c := range []byte("(.0123NRabd}el]o stu)Q\x81\x85\x86\x87\x88\x89\x8f\x90\x91\x92\x93\x94\x97\x98") {
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

// Scan walks the opcodes of the pickle at the start of data without building
// anything. It checks that every opcode is known, every length fits in the
// data and in max bytes, and that allowed approves every global named by
// GLOBAL or INST; it returns the pickle's length (through STOP). STACK_GLOBAL
// names are checked when the objects are built.
func Scan(data []byte, max int, allowed func(Global) bool) (int, error) {
	return Walk(data, max, func(op byte, g *Global) error {
		if g != nil && (allowed == nil || !allowed(*g)) {
			return fmt.Errorf("%w: %s", ErrForbidden, g)
		}
		return nil
	})
}

// Walk is Scan with a callback for each opcode (and the global it names, for
// GLOBAL and INST); an error from visit stops the walk.
func Walk(data []byte, max int, visit func(op byte, g *Global) error) (int, error) {
	if len(data) > max {
		data = data[:max]
	}
	p := 0
	need := func(n uint64) error {
		if n > uint64(len(data)-p) {
			if len(data) == max {
				return fmt.Errorf("pickle: larger than the %d-byte limit", max)
			}
			return fmt.Errorf("pickle: truncated at byte %d", p)
		}
		return nil
	}
	line := func() (string, error) {
		i := bytes.IndexByte(data[p:], '\n')
		if i < 0 {
			return "", fmt.Errorf("pickle: truncated at byte %d (unterminated line)", p)
		}
		s := string(data[p : p+i])
		p += i + 1
		return s, nil
	}
	for {
		if p >= len(data) {
			if len(data) == max {
				return 0, fmt.Errorf("pickle: larger than the %d-byte limit", max)
			}
			return 0, fmt.Errorf("pickle: truncated at byte %d (no STOP)", p)
		}
		op := data[p]
		at := p
		p++
		info := ops[op]
		if info.kind != argLine2 && info.kind != argUnknown {
			if err := visit(op, nil); err != nil {
				return 0, fmt.Errorf("%w (at byte %d)", err, at)
			}
		}
		switch info.kind {
		case argUnknown:
			return 0, fmt.Errorf("pickle: unknown opcode 0x%02x at byte %d", op, at)
		case argNone:
			if op == opStop {
				return p, nil
			}
		case argFixed:
			if err := need(uint64(info.fixed)); err != nil {
				return 0, err
			}
			if op == opProto && data[p] > 5 {
				return 0, fmt.Errorf("pickle: unsupported protocol %d", data[p])
			}
			p += info.fixed
		case argLen1, argLen4, argLen8:
			w := map[int]uint64{argLen1: 1, argLen4: 4, argLen8: 8}[info.kind]
			if err := need(w); err != nil {
				return 0, err
			}
			var n uint64
			switch w {
			case 1:
				n = uint64(data[p])
			case 4:
				n = uint64(binary.LittleEndian.Uint32(data[p:]))
			case 8:
				n = binary.LittleEndian.Uint64(data[p:])
			}
			p += int(w)
			if err := need(n); err != nil {
				return 0, err
			}
			p += int(n)
		case argFrame:
			if err := need(8); err != nil {
				return 0, err
			}
			n := binary.LittleEndian.Uint64(data[p:])
			p += 8
			if err := need(n); err != nil {
				return 0, err
			}
		case argLine:
			if _, err := line(); err != nil {
				return 0, err
			}
		case argLine2:
			mod, err := line()
			if err != nil {
				return 0, err
			}
			name, err := line()
			if err != nil {
				return 0, err
			}
			g := Global{mod, name}
			if err := visit(op, &g); err != nil {
				return 0, fmt.Errorf("%w (at byte %d)", err, at)
			}
		}
	}
}
