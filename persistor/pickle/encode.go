package pickle

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/big"
)

// Opcodes used by the protocol 2 writer.
const (
	opMark       = '('
	opStop       = '.'
	opNone       = 'N'
	opBinInt     = 'J'
	opBinInt1    = 'K'
	opBinInt2    = 'M'
	opBinFloat   = 'G'
	opBinUnicode = 'X'
	opBinPersID  = 'Q'
	opReduce     = 'R'
	opBuild      = 'b'
	opGlobal     = 'c'
	opEmptyDict  = '}'
	opEmptyList  = ']'
	opEmptyTuple = ')'
	opTuple      = 't'
	opAppend     = 'a'
	opAppends    = 'e'
	opSetItem    = 's'
	opSetItems   = 'u'
	opBinGet     = 'h'
	opLongBinGet = 'j'
	opBinPut     = 'q'
	opLongBinPut = 'r'
	opProto      = 0x80
	opTuple1     = 0x85
	opTuple2     = 0x86
	opTuple3     = 0x87
	opNewTrue    = 0x88
	opNewFalse   = 0x89
	opLong1      = 0x8a
	opLong4      = 0x8b
	opNewObj     = 0x81
	opBinBytes   = 'B'
	opShortBytes = 'C'

	batchSize = 1000 // CPython's _BATCHSIZE
)

// An Encoder writes pickles in protocol 2.
type Encoder struct {
	w    *bufio.Writer
	memo map[any]int

	// NoFloats makes a float an error: torch 1.13's weights_only loader
	// refuses BINFLOAT, so .pt metadata must not contain one.
	NoFloats bool
	// Protocol is 2 (the default, what torch.save writes) or 3, which adds
	// the bytes opcodes ([]byte values); the rest is written the same way.
	Protocol int
}

type strKey struct{ s string }

// NewEncoder returns an Encoder writing to w.
func NewEncoder(w io.Writer) *Encoder {
	return &Encoder{w: bufio.NewWriterSize(w, 64<<10)}
}

// Marshal returns the protocol 2 pickle of v.
func Marshal(v any) ([]byte, error) {
	var b bytes.Buffer
	if err := NewEncoder(&b).Encode(v); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// Encode writes one complete pickle of v. The memo starts afresh.
func (e *Encoder) Encode(v any) error {
	e.memo = make(map[any]int)
	proto := byte(2)
	if e.Protocol == 3 {
		proto = 3
	}
	e.w.Write([]byte{opProto, proto})
	if err := e.save(v); err != nil {
		return err
	}
	e.w.WriteByte(opStop)
	return e.w.Flush()
}

func (e *Encoder) put(key any) {
	i := len(e.memo)
	if key != nil {
		e.memo[key] = i
	} else {
		// Objects without identity (tuples) still take a memo slot, as in CPython.
		e.memo[&struct{ int }{i}] = i
	}
	if i < 256 {
		e.w.Write([]byte{opBinPut, byte(i)})
	} else {
		e.w.WriteByte(opLongBinPut)
		binary.Write(e.w, binary.LittleEndian, uint32(i))
	}
}

func (e *Encoder) get(key any) bool {
	i, ok := e.memo[key]
	if !ok {
		return false
	}
	if i < 256 {
		e.w.Write([]byte{opBinGet, byte(i)})
	} else {
		e.w.WriteByte(opLongBinGet)
		binary.Write(e.w, binary.LittleEndian, uint32(i))
	}
	return true
}

func (e *Encoder) save(v any) error {
	switch v := v.(type) {
	case nil:
		return e.w.WriteByte(opNone)
	case bool:
		if v {
			return e.w.WriteByte(opNewTrue)
		}
		return e.w.WriteByte(opNewFalse)
	case int:
		e.saveInt(int64(v))
	case int64:
		e.saveInt(v)
	case int32:
		e.saveInt(int64(v))
	case uint32:
		e.saveInt(int64(v))
	case *big.Int:
		if v.IsInt64() {
			e.saveInt(v.Int64())
		} else {
			e.saveLong(v)
		}
	case float64:
		if e.NoFloats {
			return errors.New("pickle: a float cannot be written here (torch 1.13 weights_only refuses it)")
		}
		e.w.WriteByte(opBinFloat)
		binary.Write(e.w, binary.BigEndian, math.Float64bits(v))
	case string:
		if e.get(strKey{v}) {
			return nil
		}
		e.w.WriteByte(opBinUnicode)
		binary.Write(e.w, binary.LittleEndian, uint32(len(v)))
		e.w.WriteString(v)
		e.put(strKey{v})
	case Global:
		if e.get(v) {
			return nil
		}
		fmt.Fprintf(e.w, "%c%s\n%s\n", opGlobal, v.Module, v.Name)
		e.put(v)
	case Tuple:
		return e.saveTuple(v)
	case List:
		e.w.WriteByte(opEmptyList)
		e.put(nil)
		return e.saveList(v)
	case *Dict:
		if e.get(v) {
			return nil
		}
		e.w.WriteByte(opEmptyDict)
		e.put(v)
		return e.saveDictItems(v.Items)
	case *OrderedDict:
		if e.get(v) {
			return nil
		}
		if err := e.save(Global{"collections", "OrderedDict"}); err != nil {
			return err
		}
		e.w.Write([]byte{opEmptyTuple, opReduce})
		e.put(v)
		if err := e.saveItems(v.Items); err != nil {
			return err
		}
		if v.State == nil { // a typed nil *Dict is not a nil state
			return nil
		}
		return e.saveState(v.State)
	case *Reduce:
		if e.get(v) {
			return nil
		}
		if err := e.save(v.Func); err != nil {
			return err
		}
		if err := e.save(v.Args); err != nil {
			return err
		}
		e.w.WriteByte(opReduce)
		e.put(v)
		return e.saveState(v.State)
	case []byte:
		if e.Protocol < 3 {
			return errors.New("pickle: bytes need protocol 3")
		}
		if len(v) < 256 {
			e.w.Write([]byte{opShortBytes, byte(len(v))})
		} else {
			e.w.WriteByte(opBinBytes)
			binary.Write(e.w, binary.LittleEndian, uint32(len(v)))
		}
		e.w.Write(v)
		e.put(nil)
	case *Object:
		if e.get(v) {
			return nil
		}
		if err := e.save(v.Class); err != nil {
			return err
		}
		if err := e.save(v.Args); err != nil {
			return err
		}
		e.w.WriteByte(opNewObj)
		e.put(v)
		if err := e.saveItems(v.Items); err != nil {
			return err
		}
		return e.saveState(v.State)
	case PersistentID:
		if err := e.save(v.ID); err != nil {
			return err
		}
		e.w.WriteByte(opBinPersID)
	default:
		return fmt.Errorf("pickle: cannot write a value of type %T", v)
	}
	return nil
}

// saveState writes an object's state and BUILD, when it has one.
func (e *Encoder) saveState(state any) error {
	if state == nil {
		return nil
	}
	if err := e.save(state); err != nil {
		return err
	}
	return e.w.WriteByte(opBuild)
}

func (e *Encoder) saveTuple(t Tuple) error {
	if len(t) == 0 {
		return e.w.WriteByte(opEmptyTuple)
	}
	if len(t) > 3 {
		e.w.WriteByte(opMark)
	}
	for _, x := range t {
		if err := e.save(x); err != nil {
			return err
		}
	}
	switch len(t) {
	case 1:
		e.w.WriteByte(opTuple1)
	case 2:
		e.w.WriteByte(opTuple2)
	case 3:
		e.w.WriteByte(opTuple3)
	default:
		e.w.WriteByte(opTuple)
	}
	e.put(nil)
	return nil
}

func (e *Encoder) saveItems(items []Item) error {
	return e.batch(len(items), opSetItem, opSetItems, func(i int) error {
		if err := e.save(items[i].Key); err != nil {
			return err
		}
		return e.save(items[i].Value)
	})
}

// saveList writes a list's items as CPython's batch_list_exact does: a lone
// item with APPEND, otherwise MARK ... APPENDS per 1000 items.
func (e *Encoder) saveList(l List) error {
	if len(l) == 1 {
		if err := e.save(l[0]); err != nil {
			return err
		}
		return e.w.WriteByte(opAppend)
	}
	for start := 0; start < len(l); start += batchSize {
		e.w.WriteByte(opMark)
		for _, x := range l[start:min(start+batchSize, len(l))] {
			if err := e.save(x); err != nil {
				return err
			}
		}
		e.w.WriteByte(opAppends)
	}
	return nil
}

// saveDictItems writes a plain dict's items as CPython's batch_dict_exact
// does: a lone item with SETITEM, otherwise MARK ... SETITEMS per 1000 items,
// including the empty batch that follows a full last one.
func (e *Encoder) saveDictItems(items []Item) error {
	if len(items) == 0 {
		return nil
	}
	if len(items) == 1 {
		return e.saveItems(items)
	}
	for start := 0; ; start += batchSize {
		end := min(start+batchSize, len(items))
		e.w.WriteByte(opMark)
		for _, it := range items[start:end] {
			if err := e.save(it.Key); err != nil {
				return err
			}
			if err := e.save(it.Value); err != nil {
				return err
			}
		}
		e.w.WriteByte(opSetItems)
		if end-start < batchSize {
			return nil
		}
	}
}

// batch writes n elements as CPython's iterator-based batching does (used
// for OrderedDict): MARK ... many-op per 1000, and a lone element, first or
// last, with the single-op.
func (e *Encoder) batch(n int, one, many byte, elem func(int) error) error {
	for start := 0; start < n; start += batchSize {
		end := min(start+batchSize, n)
		if end-start == 1 {
			if err := elem(start); err != nil {
				return err
			}
			e.w.WriteByte(one)
			continue
		}
		e.w.WriteByte(opMark)
		for i := start; i < end; i++ {
			if err := elem(i); err != nil {
				return err
			}
		}
		e.w.WriteByte(many)
	}
	return nil
}

func (e *Encoder) saveInt(v int64) {
	switch {
	case v >= 0 && v < 256:
		e.w.Write([]byte{opBinInt1, byte(v)})
	case v >= 0 && v < 65536:
		e.w.Write([]byte{opBinInt2, byte(v), byte(v >> 8)})
	case v >= math.MinInt32 && v <= math.MaxInt32:
		e.w.WriteByte(opBinInt)
		binary.Write(e.w, binary.LittleEndian, int32(v))
	default:
		e.saveLong(big.NewInt(v))
	}
}

// saveLong writes LONG1/LONG4: minimal two's complement, little endian.
func (e *Encoder) saveLong(v *big.Int) {
	n := v.BitLen()/8 + 1
	b := make([]byte, n)
	t := new(big.Int).Set(v)
	if v.Sign() < 0 {
		t.Add(t, new(big.Int).Lsh(big.NewInt(1), uint(8*n)))
	}
	tb := t.Bytes()
	for i := range tb {
		b[i] = tb[len(tb)-1-i]
	}
	// Drop a redundant sign byte, as CPython's encode_long does.
	if n > 1 && ((b[n-1] == 0 && b[n-2]&0x80 == 0) || (b[n-1] == 0xff && b[n-2]&0x80 != 0)) {
		b = b[:n-1]
	}
	if len(b) < 256 {
		e.w.Write([]byte{opLong1, byte(len(b))})
	} else {
		e.w.WriteByte(opLong4)
		binary.Write(e.w, binary.LittleEndian, uint32(len(b)))
	}
	e.w.Write(b)
}
