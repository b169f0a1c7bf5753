package wire20

import (
	"errors"
	"fmt"
	"math/bits"

	"github.com/flarego/flarego/flare/npy"
	"github.com/flarego/flarego/persistor"
	"github.com/flarego/flarego/persistor/pickle"
)

type dtype struct {
	code  string
	order string // '<', '>', '|' (from BUILD); '=' until then
}

func newDtype(args ...any) (any, error) {
	if len(args) < 1 {
		return nil, errors.New("numpy.dtype needs a type code")
	}
	code, ok := args[0].(string)
	if !ok {
		return nil, errors.New("numpy.dtype code is not a string")
	}
	if _, ok := npy.DType(code); !ok {
		return nil, fmt.Errorf("numpy dtype %q is not supported", code)
	}
	return &dtype{code: code, order: "="}, nil
}

// PySetState takes numpy's dtype state (version, byteorder, ...).
func (d *dtype) PySetState(state any) error {
	t, ok := state.(*pickle.GoTuple)
	if !ok || t.Len() < 2 {
		return errors.New("numpy dtype state is not a tuple")
	}
	order, ok := t.Get(1).(string)
	if !ok {
		return errors.New("numpy dtype byte order is not a string")
	}
	d.order = order
	return nil
}

// ndarray stands for numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')
// filled by BUILD with (version, shape, dtype, fortran, bytes).
type ndarray struct {
	shape   []int
	dt      *dtype
	fortran bool
	data    []byte
	built   bool
}

func reconstruct(args ...any) (any, error) {
	if len(args) != 3 {
		return nil, errors.New("_reconstruct takes three arguments")
	}
	if _, ok := args[0].(ndarrayClass); !ok {
		return nil, errors.New("_reconstruct of something other than numpy.ndarray")
	}
	return &ndarray{}, nil
}

// npScalar stands for numpy.core.multiarray.scalar(dtype, bytes): a numpy
// scalar such as np.int64, which is what "array + 1" gives for a 0-dim
// array (NVFlare's trainers return num_batches_tracked that way).
func npScalar(args ...any) (any, error) {
	if len(args) != 2 {
		return nil, errors.New("numpy scalar takes two arguments")
	}
	dt, ok := args[0].(*dtype)
	if !ok {
		return nil, errors.New("numpy scalar without a dtype")
	}
	var data []byte
	switch d := args[1].(type) {
	case []byte:
		data = d
	case string: // Python 2 peers
		for _, r := range d {
			if r > 255 {
				return nil, errors.New("numpy scalar data is not latin-1")
			}
			data = append(data, byte(r))
		}
	default:
		return nil, fmt.Errorf("numpy scalar data is a %T", args[1])
	}
	if d, _ := npy.DType(dt.code); len(data) != d.Size() {
		return nil, fmt.Errorf("numpy scalar of dtype %s has %d bytes, want %d", dt.code, len(data), d.Size())
	}
	return &ndarray{shape: []int{}, dt: dt, data: data, built: true}, nil
}

func (a *ndarray) PySetState(state any) error {
	t, ok := state.(*pickle.GoTuple)
	if !ok || t.Len() != 5 {
		return errors.New("numpy array state is not a 5-tuple")
	}
	shape, ok := t.Get(1).(*pickle.GoTuple)
	if !ok || shape.Len() > 32 {
		return errors.New("numpy array shape is not a tuple")
	}
	var dims []int
	for i := 0; i < shape.Len(); i++ {
		n, ok := toInt64(shape.Get(i))
		if !ok || n < 0 || n > 1<<40 {
			return errors.New("numpy array shape is not made of sizes")
		}
		dims = append(dims, int(n))
	}
	a.shape = dims
	if a.dt, ok = t.Get(2).(*dtype); !ok {
		return errors.New("numpy array dtype missing")
	}
	a.fortran, _ = t.Get(3).(bool)
	switch d := t.Get(4).(type) {
	case []byte:
		a.data = d
	case string: // protocol 2 from Python 2 peers: latin-1 text
		a.data = make([]byte, 0, len(d))
		for _, r := range d {
			if r > 255 {
				return errors.New("numpy array data is not latin-1")
			}
			a.data = append(a.data, byte(r))
		}
	default:
		return fmt.Errorf("numpy array data is a %T (object arrays are not accepted)", t.Get(4))
	}
	a.built = true
	return nil
}

// tensor checks the array and returns it as a C-ordered little-endian tensor.
func (a *ndarray) tensor() (*persistor.Tensor, error) {
	if !a.built {
		return nil, errors.New("numpy array without state")
	}
	dt, _ := npy.DType(a.dt.code)
	if a.dt.order == ">" && dt.Size() > 1 {
		return nil, errors.New("big-endian numpy arrays are not supported")
	}
	// The declared shape is checked against the bytes present before
	// anything is allocated: a shape of [2^20, 2^20] with 8 bytes of data
	// must cost nothing.
	want, ok := arrayBytes(a.shape, dt.Size())
	if !ok {
		return nil, fmt.Errorf("numpy array of shape %v declares more bytes than any message holds (%d present)", a.shape, len(a.data))
	}
	if len(a.data) != want {
		return nil, fmt.Errorf("numpy array of shape %v has %d bytes, want %d", a.shape, len(a.data), want)
	}
	if a.fortran && len(a.shape) > 1 {
		return nil, errors.New("numpy arrays in Fortran order are not supported")
	}
	return &persistor.Tensor{DType: dt, Shape: append([]int{}, a.shape...), Data: a.data}, nil
}

// arrayBytes is the byte size of an array of this shape, false when the
// product overflows or passes MaxPickleBytes (the data could not be there).
func arrayBytes(shape []int, itemSize int) (int, bool) {
	n := uint64(itemSize)
	for _, d := range shape {
		if d < 0 {
			return 0, false
		}
		hi, lo := bits.Mul64(n, uint64(d))
		if hi != 0 || lo > uint64(MaxPickleBytes) {
			return 0, false
		}
		n = lo
	}
	return int(n), true
}

// ndarrayValue writes a tensor as numpy pickles an array.
func ndarrayValue(t *persistor.Tensor) (any, error) {
	code := npy.Code(t.DType)
	if code == "" {
		return nil, fmt.Errorf("%s has no numpy dtype", t.DType)
	}
	order := "<"
	if t.DType.Size() == 1 {
		order = "|"
	}
	dt := &pickle.Reduce{Func: globalDtype, Args: pickle.Tuple{code, false, true},
		State: pickle.Tuple{3, order, nil, nil, nil, -1, -1, 0}}
	shape := make(pickle.Tuple, len(t.Shape))
	for i, s := range t.Shape {
		shape[i] = s
	}
	return &pickle.Reduce{Func: globalRecons, Args: pickle.Tuple{globalNdarray, pickle.Tuple{0}, []byte("b")},
		State: pickle.Tuple{1, shape, dt, false, t.Data}}, nil
}
