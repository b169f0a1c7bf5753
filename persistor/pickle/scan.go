package pickle

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strconv"
)

// Integers larger than these are refused before anything parses them:
// gopickle's conversions are quadratic in their length, and no format read
// here has integers anywhere near them.
const (
	// MaxIntDigits bounds a decimal INT or LONG, as Python's
	// int_max_str_digits does by default.
	MaxIntDigits = 4300
	// MaxLongBytes bounds a binary LONG1 or LONG4 (2466 decimal digits).
	MaxLongBytes = 1024
)

// maxWalkDepth bounds the nesting the opcode walk follows. It is above
// maxDepth since a reduced object counts its callable and arguments as
// levels where the converted value does not.
const maxWalkDepth = 2 * maxDepth

var (
	errTooManyValues = errors.New("pickle: too many values")
	errCycle         = errors.New("pickle: self-referencing value")
	errDeep          = errors.New("pickle: nested too deeply")
)

// limits bound what a pickle may build, counted on its opcodes; see
// Unpickler.MaxValues and MaxValueBytes.
type limits struct {
	Values     int   // 0 means DefaultMaxValues
	ValueBytes int64 // 0 means DefaultValueBytes of the pickle's length
}

// Scan walks the opcodes of the pickle at the start of data without building
// anything. It checks that every opcode is known, every length fits in the
// data and in max bytes, that allowed approves every global named by GLOBAL
// or INST, that every memo reference names a value stored before, that
// integers are within MaxIntDigits and MaxLongBytes, and that the values the
// pickle builds and stands for are within the default limits; it returns
// the pickle's length (through STOP). STACK_GLOBAL names are checked when
// the objects are built.
func Scan(data []byte, max int, allowed func(Global) bool) (int, error) {
	return scan(data, max, allowed, limits{})
}

func scan(data []byte, max int, allowed func(Global) bool, lim limits) (int, error) {
	if lim.Values <= 0 {
		lim.Values = DefaultMaxValues
	}
	// Node ids are int32; no pickle we accept has 2^31 values.
	vm := &shapeVM{limit: min(lim.Values, math.MaxInt32-1), memo: map[uint64]int32{}}
	n, err := walk(data, max, func(op byte, arg []byte, g *Global) error {
		if g != nil && (allowed == nil || !allowed(*g)) {
			return fmt.Errorf("%w: %s", ErrForbidden, g)
		}
		if err := checkInt(op, arg); err != nil {
			return err
		}
		return vm.step(op, arg)
	})
	if err != nil {
		return 0, err
	}
	byteLimit := lim.ValueBytes
	if byteLimit <= 0 {
		byteLimit = DefaultValueBytes(n)
	}
	if err := vm.expand(int64(lim.Values), byteLimit); err != nil {
		return 0, err
	}
	return n, nil
}

// checkInt refuses integers too long to parse cheaply.
func checkInt(op byte, arg []byte) error {
	switch op {
	case 'I', 'L':
		digits := bytes.TrimSuffix(bytes.TrimLeft(arg, "+- "), []byte("L"))
		if len(digits) > MaxIntDigits {
			return fmt.Errorf("pickle: integer of %d digits exceeds the limit of %d", len(digits), MaxIntDigits)
		}
	case 0x8a, 0x8b:
		if len(arg) > MaxLongBytes {
			return fmt.Errorf("pickle: integer of %d bytes exceeds the limit of %d", len(arg), MaxLongBytes)
		}
	}
	return nil
}

// Walk is Scan's structural part with a callback for each opcode (and the
// global it names, for GLOBAL and INST); an error from visit stops the walk.
func Walk(data []byte, max int, visit func(op byte, g *Global) error) (int, error) {
	return walk(data, max, func(op byte, _ []byte, g *Global) error {
		if visit == nil {
			return nil
		}
		return visit(op, g)
	})
}

// walk calls visit with each opcode and its argument: the fixed bytes, the
// data of a length-prefixed argument, or a line without its newline.
func walk(data []byte, max int, visit func(op byte, arg []byte, g *Global) error) (int, error) {
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
	line := func() ([]byte, error) {
		i := bytes.IndexByte(data[p:], '\n')
		if i < 0 {
			return nil, fmt.Errorf("pickle: truncated at byte %d (unterminated line)", p)
		}
		s := data[p : p+i]
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
		var arg []byte
		var g *Global
		switch info := ops[op]; info.kind {
		case argUnknown:
			return 0, fmt.Errorf("pickle: unknown opcode 0x%02x at byte %d", op, at)
		case argNone:
		case argFixed:
			if err := need(uint64(info.fixed)); err != nil {
				return 0, err
			}
			if op == opProto && data[p] > 5 {
				return 0, fmt.Errorf("pickle: unsupported protocol %d", data[p])
			}
			arg = data[p : p+info.fixed]
			p += info.fixed
		case argLen1, argLen4, argLen8:
			w := uint64(1)
			switch info.kind {
			case argLen4:
				w = 4
			case argLen8:
				w = 8
			}
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
			arg = data[p : p+int(n)]
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
			l, err := line()
			if err != nil {
				return 0, err
			}
			arg = l
		case argLine2:
			mod, err := line()
			if err != nil {
				return 0, err
			}
			name, err := line()
			if err != nil {
				return 0, err
			}
			g = &Global{string(mod), string(name)}
		}
		if err := visit(op, arg, g); err != nil {
			return 0, fmt.Errorf("%w (at byte %d)", err, at)
		}
		if op == opStop {
			return p, nil
		}
	}
}

// shapeVM runs a pickle's opcodes on the shape of its values only: each
// value is a node with the bytes it holds and edges to the values it
// references, so that what the pickle builds and what its result stands for
// (walked as a tree) can be bounded before gopickle builds anything. The
// stack and marks follow Python's unpickler, so a memo reference to nothing
// or a pop past a mark is refused as Python refuses it.
type shapeVM struct {
	limit  int
	pushes int     // values built, memo references pushed, memo entries stored
	size   []int64 // the bytes each node holds itself
	edges  []edge
	stack  []int32
	marks  []int // stack lengths at each MARK
	memo   map[uint64]int32
	result int32
	// args are the values passed to REDUCE, NEWOBJ, BUILD, persistent_load
	// and the like, each time they are.
	args []int32
	// values and bytes: the result walked as a tree, once expand is done
	values, bytes int64
}

type edge struct{ from, to int32 }

func (vm *shapeVM) push(n int32) error {
	if err := vm.count(); err != nil {
		return err
	}
	vm.stack = append(vm.stack, n)
	return nil
}

// count counts one value built, memo reference pushed or memo entry
// stored: what costs gopickle memory.
func (vm *shapeVM) count() error {
	if vm.pushes++; vm.pushes > vm.limit {
		return fmt.Errorf("%w: builds more than %d (values, memo references and memo entries)", errTooManyValues, vm.limit)
	}
	return nil
}

// node makes a value holding size bytes and referencing children, and
// pushes it.
func (vm *shapeVM) node(size int64, children ...int32) error {
	id := int32(len(vm.size))
	vm.size = append(vm.size, size)
	for _, c := range children {
		vm.edges = append(vm.edges, edge{id, c})
	}
	return vm.push(id)
}

func (vm *shapeVM) base() int {
	if len(vm.marks) == 0 {
		return 0
	}
	return vm.marks[len(vm.marks)-1]
}

var errUnderflow = errors.New("pickle: stack underflow")

func (vm *shapeVM) top() (int32, error) {
	if len(vm.stack) <= vm.base() {
		return 0, errUnderflow
	}
	return vm.stack[len(vm.stack)-1], nil
}

// pop removes n values above the last mark and returns them, oldest
// first; the slice is valid until the next push.
func (vm *shapeVM) pop(n int) ([]int32, error) {
	if len(vm.stack)-vm.base() < n {
		return nil, errUnderflow
	}
	at := len(vm.stack) - n
	items := vm.stack[at:]
	vm.stack = vm.stack[:at]
	return items, nil
}

// popMark removes the values above the last mark, and the mark.
func (vm *shapeVM) popMark() ([]int32, error) {
	if len(vm.marks) == 0 {
		return nil, errors.New("pickle: no MARK to pop to")
	}
	at := vm.marks[len(vm.marks)-1]
	vm.marks = vm.marks[:len(vm.marks)-1]
	items := vm.stack[at:]
	vm.stack = vm.stack[:at]
	return items, nil
}

// attach adds children to the value on top of the stack (APPEND, SETITEM,
// BUILD, ...).
func (vm *shapeVM) attach(children []int32) error {
	t, err := vm.top()
	if err != nil {
		return err
	}
	for _, c := range children {
		vm.edges = append(vm.edges, edge{t, c})
	}
	return nil
}

func (vm *shapeVM) step(op byte, arg []byte) error {
	switch op {
	case opMark:
		if len(vm.marks) >= maxDepth {
			return errors.New("pickle: too many nested MARKs")
		}
		vm.marks = append(vm.marks, len(vm.stack))
	case opStop:
		r, err := vm.pop(1)
		if err != nil {
			return err
		}
		vm.result = r[0]
	case '0': // POP; Python pops the mark when the stack above it is empty
		if len(vm.stack) == vm.base() && len(vm.marks) > 0 {
			_, err := vm.popMark()
			return err
		}
		_, err := vm.pop(1)
		return err
	case '1': // POP_MARK
		_, err := vm.popMark()
		return err
	case '2': // DUP
		t, err := vm.top()
		if err != nil {
			return err
		}
		return vm.push(t)
	case 'S', 'T', 'U', 'V', 'X', 'B', 'C', 0x8c, 0x8d, 0x8e, 0x96: // strings and bytes
		return vm.node(int64(len(arg)))
	case 'F', 'I', 'J', 'K', 'L', 'M', 'N', 'G', 0x88, 0x89, 0x8a, 0x8b, // scalars
		'c', 0x82, 0x83, 0x84, // globals, extensions
		'}', ']', ')', 0x8f, // empty containers
		'P', 0x97: // PERSID, NEXT_BUFFER
		return vm.node(0)
	case 0x98: // READONLY_BUFFER keeps its value
		_, err := vm.top()
		return err
	case 0x85: // TUPLE1
		return vm.popInto(1, false)
	case 0x86, 0x93: // TUPLE2, STACK_GLOBAL
		return vm.popInto(2, false)
	case 0x87: // TUPLE3
		return vm.popInto(3, false)
	case 'Q': // BINPERSID
		return vm.popInto(1, true)
	case 'R', 0x81: // REDUCE, NEWOBJ
		return vm.popInto(2, true)
	case 0x92: // NEWOBJ_EX
		return vm.popInto(3, true)
	case 'a', 'b': // APPEND, BUILD
		c, err := vm.pop(1)
		if err != nil {
			return err
		}
		if op == 'b' {
			vm.args = append(vm.args, c...)
		}
		return vm.attach(c)
	case 's': // SETITEM
		c, err := vm.pop(2)
		if err != nil {
			return err
		}
		return vm.attach(c)
	case 'e', 'u', 0x90: // APPENDS, SETITEMS, ADDITEMS
		c, err := vm.popMark()
		if err != nil {
			return err
		}
		return vm.attach(c)
	case 'd', 'l', 't', 0x91, 'o', 'i': // DICT, LIST, TUPLE, FROZENSET, OBJ, INST
		c, err := vm.popMark()
		if err != nil {
			return err
		}
		if op == 'o' && len(c) == 0 {
			return errUnderflow
		}
		if op == 'o' || op == 'i' {
			vm.args = append(vm.args, c...)
		}
		return vm.node(0, c...)
	case 'g', 'h', 'j': // GET, BINGET, LONG_BINGET
		i, err := memoIndex(op, arg)
		if err != nil {
			return err
		}
		v, ok := vm.memo[i]
		if !ok {
			return fmt.Errorf("pickle: memo value not found at index %d", i)
		}
		return vm.push(v)
	case 'p', 'q', 'r': // PUT, BINPUT, LONG_BINPUT
		i, err := memoIndex(op, arg)
		if err != nil {
			return err
		}
		t, err := vm.top()
		if err != nil {
			return err
		}
		vm.memo[i] = t
		return vm.count()
	case 0x94: // MEMOIZE
		t, err := vm.top()
		if err != nil {
			return err
		}
		vm.memo[uint64(len(vm.memo))] = t
		return vm.count()
	case opProto, 0x95: // PROTO, FRAME
	default:
		return fmt.Errorf("pickle: unknown opcode 0x%02x", op)
	}
	return nil
}

// popInto pops n values and pushes one value referencing them; call says
// they are a call's arguments.
func (vm *shapeVM) popInto(n int, call bool) error {
	c, err := vm.pop(n)
	if err != nil {
		return err
	}
	if call {
		vm.args = append(vm.args, c...)
	}
	return vm.node(0, c...)
}

func memoIndex(op byte, arg []byte) (uint64, error) {
	switch op {
	case 'h', 'q':
		return uint64(arg[0]), nil
	case 'j', 'r':
		return uint64(binary.LittleEndian.Uint32(arg)), nil
	}
	i, err := strconv.ParseUint(string(arg), 10, 63)
	if err != nil {
		return 0, fmt.Errorf("pickle: bad memo index %q", arg)
	}
	return i, nil
}

// expand walks the result as a tree, each shared value once per path to it
// (memoised, so in time linear in the pickle), and refuses one that holds
// more than maxValues values or maxBytes bytes, or refers to itself.
func (vm *shapeVM) expand(maxValues, maxBytes int64) error {
	n := len(vm.size)
	start := make([]int32, n+1)
	for _, e := range vm.edges {
		start[e.from+1]++
	}
	for i := 0; i < n; i++ {
		start[i+1] += start[i]
	}
	next := append([]int32(nil), start[:n]...)
	child := make([]int32, len(vm.edges))
	for _, e := range vm.edges {
		child[next[e.from]] = e.to
		next[e.from]++
	}
	count := make([]int64, n)
	total := make([]int64, n)
	const (
		unseen = iota
		open
		done
	)
	state := make([]uint8, n)
	within := func(c, b int64) error {
		if c > maxValues {
			return fmt.Errorf("%w: stands for more than %d when walked as a tree (shared values counted each time)", errTooManyValues, maxValues)
		}
		if b > maxBytes {
			return fmt.Errorf("pickle: its strings and bytes stand for more than %d bytes when walked as a tree (shared values counted each time)", maxBytes)
		}
		return nil
	}
	var visit func(v int32, depth int) error
	visit = func(v int32, depth int) error {
		switch state[v] {
		case done:
			return nil
		case open:
			return errCycle
		}
		if depth > maxWalkDepth {
			return errDeep
		}
		state[v] = open
		c, b := int64(1), vm.size[v]
		for _, w := range child[start[v]:start[v+1]] {
			if err := visit(w, depth+1); err != nil {
				return err
			}
			// Each term is within the limits, so the sums cannot overflow.
			c += count[w]
			b += total[w]
			if err := within(c, b); err != nil {
				return err
			}
		}
		if err := within(c, b); err != nil {
			return err
		}
		count[v], total[v], state[v] = c, b, done
		return nil
	}
	if err := visit(vm.result, 0); err != nil {
		return err
	}
	vm.values, vm.bytes = count[vm.result], total[vm.result]
	// What the callables, classes and persistent_load receive, all calls
	// together: they may walk it (and a stand-in copy what it holds) even
	// when the pickle then drops what they made.
	var c, b int64
	for _, a := range vm.args {
		if err := visit(a, 0); err != nil {
			return err
		}
		c += count[a]
		b += total[a]
		if c > maxValues {
			return fmt.Errorf("%w: passes more than %d to the objects it rebuilds (shared values counted each time)", errTooManyValues, maxValues)
		}
		if b > maxBytes {
			return fmt.Errorf("pickle: passes strings and bytes of more than %d bytes to the objects it rebuilds (shared values counted each time)", maxBytes)
		}
	}
	return nil
}
