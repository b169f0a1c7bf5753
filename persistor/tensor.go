package persistor

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"
	"strings"
	"unsafe"

	"github.com/flarego/flarego/persistor/pickle"
)

// DType is a tensor element type, named as PyTorch names it.
type DType int

// The dtypes a state dict may hold.
const (
	Float32 DType = iota
	Float64
	Float16
	BFloat16
	Int64
	Int32
	Int16
	Int8
	Uint8
	Bool
	numDTypes
)

var dtypeInfo = [numDTypes]struct {
	name    string // torch.float32
	storage string // FloatStorage
	size    int
}{
	Float32:  {"float32", "FloatStorage", 4},
	Float64:  {"float64", "DoubleStorage", 8},
	Float16:  {"float16", "HalfStorage", 2},
	BFloat16: {"bfloat16", "BFloat16Storage", 2},
	Int64:    {"int64", "LongStorage", 8},
	Int32:    {"int32", "IntStorage", 4},
	Int16:    {"int16", "ShortStorage", 2},
	Int8:     {"int8", "CharStorage", 1},
	Uint8:    {"uint8", "ByteStorage", 1},
	Bool:     {"bool", "BoolStorage", 1},
}

func (d DType) String() string {
	if d < 0 || d >= numDTypes {
		return fmt.Sprintf("DType(%d)", int(d))
	}
	return dtypeInfo[d].name
}

// Size is the number of bytes of one element.
func (d DType) Size() int { return dtypeInfo[d].size }

// A Tensor is a dense, contiguous, row-major array of little-endian elements.
// Data may alias the buffer a file was read into; treat it as read-only
// unless you made the tensor.
type Tensor struct {
	DType DType
	Shape []int // empty for a 0-dim tensor
	Data  []byte
}

// maxElements bounds a tensor's element count (2^40) so that products of
// hostile shapes cannot overflow.
const maxElements = 1 << 40

// NumElements returns the product of the shape (1 for a 0-dim tensor).
func (t *Tensor) NumElements() int {
	n, _ := numel(t.Shape)
	return n
}

func numel(shape []int) (int, error) {
	n := uint64(1)
	for _, s := range shape {
		if s < 0 {
			return 0, fmt.Errorf("negative dimension %d", s)
		}
		hi, lo := bits.Mul64(n, uint64(s))
		if hi != 0 || lo > maxElements {
			return 0, fmt.Errorf("shape %v has more than 2^40 elements", shape)
		}
		n = lo
	}
	return int(n), nil
}

// NewTensor makes a tensor of zeros.
func NewTensor(dtype DType, shape ...int) (*Tensor, error) {
	n, err := numel(shape)
	if err != nil {
		return nil, err
	}
	return &Tensor{DType: dtype, Shape: append([]int{}, shape...), Data: make([]byte, n*dtype.Size())}, nil
}

// FromFloat32 makes a float32 tensor that shares v's memory.
func FromFloat32(v []float32, shape ...int) *Tensor {
	return &Tensor{DType: Float32, Shape: append([]int{}, shape...), Data: bytesOf(v)}
}

// FromFloat64 makes a float64 tensor that shares v's memory.
func FromFloat64(v []float64, shape ...int) *Tensor {
	return &Tensor{DType: Float64, Shape: append([]int{}, shape...), Data: bytesOf(v)}
}

// FromInt64 makes an int64 tensor that shares v's memory.
func FromInt64(v []int64, shape ...int) *Tensor {
	return &Tensor{DType: Int64, Shape: append([]int{}, shape...), Data: bytesOf(v)}
}

func bytesOf[T any](v []T) []byte {
	if len(v) == 0 {
		return []byte{}
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), len(v)*int(unsafe.Sizeof(v[0])))
}

// view returns Data as []T without copying when it is aligned, else a copy.
func view[T any](data []byte) []T {
	var zero T
	size := int(unsafe.Sizeof(zero))
	n := len(data) / size
	if n == 0 {
		return []T{}
	}
	if uintptr(unsafe.Pointer(&data[0]))%unsafe.Alignof(zero) == 0 {
		return unsafe.Slice((*T)(unsafe.Pointer(&data[0])), n)
	}
	out := make([]T, n)
	copy(bytesOf(out), data)
	return out
}

// Float32s returns the elements of a float32 tensor, sharing its memory
// when it is aligned.
func (t *Tensor) Float32s() ([]float32, error) {
	if t.DType != Float32 {
		return nil, fmt.Errorf("tensor is %s, not float32", t.DType)
	}
	return view[float32](t.Data), nil
}

// Float64At returns element i converted to float64, whatever the dtype.
func (t *Tensor) Float64At(i int) float64 {
	b := t.Data[i*t.DType.Size():]
	switch t.DType {
	case Float32:
		return float64(math.Float32frombits(binary.LittleEndian.Uint32(b)))
	case Float64:
		return math.Float64frombits(binary.LittleEndian.Uint64(b))
	case Float16:
		return float64(halfToFloat(binary.LittleEndian.Uint16(b)))
	case BFloat16:
		return float64(math.Float32frombits(uint32(binary.LittleEndian.Uint16(b)) << 16))
	case Int64:
		return float64(int64(binary.LittleEndian.Uint64(b)))
	case Int32:
		return float64(int32(binary.LittleEndian.Uint32(b)))
	case Int16:
		return float64(int16(binary.LittleEndian.Uint16(b)))
	case Int8:
		return float64(int8(b[0]))
	case Uint8, Bool:
		return float64(b[0])
	}
	return math.NaN()
}

func halfToFloat(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := uint32(h>>10) & 0x1f
	frac := uint32(h) & 0x3ff
	switch {
	case exp == 0x1f:
		return math.Float32frombits(sign | 0x7f800000 | frac<<13)
	case exp == 0:
		if frac == 0 {
			return math.Float32frombits(sign)
		}
		f := float32(frac) / 1024 / 16384 // 2^-14 * frac/1024
		if sign != 0 {
			return -f
		}
		return f
	}
	return math.Float32frombits(sign | (exp+112)<<23 | frac<<13)
}

func (t *Tensor) String() string {
	dims := make([]string, len(t.Shape))
	for i, s := range t.Shape {
		dims[i] = fmt.Sprint(s)
	}
	return fmt.Sprintf("%s[%s]", t.DType, strings.Join(dims, ", "))
}

// A StateDict maps parameter names to tensors in a fixed order, like
// PyTorch's module.state_dict().
type StateDict struct {
	names   []string
	tensors map[string]*Tensor
	// Attrs is the OrderedDict's __dict__ as read (torch's _metadata with
	// module versions); it is written back as it is. Nil for new dicts.
	Attrs *pickle.Dict
}

// NewStateDict returns an empty state dict.
func NewStateDict() *StateDict { return &StateDict{tensors: map[string]*Tensor{}} }

// Set adds or replaces a tensor; a new name goes last.
func (sd *StateDict) Set(name string, t *Tensor) {
	if _, ok := sd.tensors[name]; !ok {
		sd.names = append(sd.names, name)
	}
	sd.tensors[name] = t
}

// Get returns the named tensor or nil.
func (sd *StateDict) Get(name string) *Tensor { return sd.tensors[name] }

// Names returns the names in order.
func (sd *StateDict) Names() []string { return append([]string(nil), sd.names...) }

// Len returns the number of tensors.
func (sd *StateDict) Len() int { return len(sd.names) }

// Bytes returns the total size of the tensors' data.
func (sd *StateDict) Bytes() int64 {
	var n int64
	for _, t := range sd.tensors {
		n += int64(len(t.Data))
	}
	return n
}
