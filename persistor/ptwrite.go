package persistor

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"sort"
	"strconv"

	"github.com/flarego/flarego/persistor/pickle"
)

// PTOptions tune WritePT.
type PTOptions struct {
	// Prefix is the archive's folder; torch uses the file's base name without
	// extension, or "archive" for a buffer. Empty means "archive".
	Prefix string
	// Torch113 leaves out the byteorder record, so that the file is byte for
	// byte what torch 1.13's torch.save writes. Both forms load everywhere.
	Torch113 bool
}

var rebuildTensorV2 = pickle.Global{Module: "torch._utils", Name: "_rebuild_tensor_v2"}

// WritePT writes v as a zip .pt: tensors become typed storages rebuilt by
// torch._utils._rebuild_tensor_v2, containers are written in protocol 2.
// v is built from *Tensor, *StateDict, *Checkpoint and the values of package
// pickle, with no floats (torch 1.13's weights_only loader refuses them).
// Tensor data is streamed to w, not copied.
func WritePT(w io.Writer, v any, opt PTOptions) error {
	prefix := opt.Prefix
	if prefix == "" {
		prefix = "archive"
	}
	var tensors []*Tensor
	tree, err := ptTree(v, &tensors, 0)
	if err != nil {
		return err
	}
	var pkl pickleBuffer
	enc := pickle.NewEncoder(&pkl)
	enc.NoFloats = true
	if err := enc.Encode(tree); err != nil {
		return err
	}
	zw := &ptZipWriter{w: bufio.NewWriterSize(w, 1<<20)}
	zw.add(prefix+"/data.pkl", pkl.b)
	if !opt.Torch113 {
		zw.add(prefix+"/byteorder", []byte("little"))
	}
	keys := make([]string, len(tensors))
	for i := range tensors {
		keys[i] = strconv.Itoa(i)
	}
	sort.Strings(keys) // torch 1.13 writes records in lexicographic key order
	for _, k := range keys {
		i, _ := strconv.Atoi(k)
		zw.add(prefix+"/data/"+k, tensors[i].Data)
	}
	zw.add(prefix+"/version", []byte("3\n"))
	return zw.finish()
}

type pickleBuffer struct{ b []byte }

func (p *pickleBuffer) Write(b []byte) (int, error) { p.b = append(p.b, b...); return len(b), nil }

// ptTree replaces tensors by the reduce calls torch pickles them as, and
// numbers their storages in the order the pickler meets them.
func ptTree(v any, tensors *[]*Tensor, depth int) (any, error) {
	if depth > 100 {
		return nil, errors.New("writing .pt: value nested too deeply")
	}
	switch v := v.(type) {
	case *Tensor:
		n, err := numel(v.Shape)
		if err != nil {
			return nil, fmt.Errorf("writing .pt: %w", err)
		}
		if v.DType < 0 || v.DType >= numDTypes || len(v.Data) != n*v.DType.Size() {
			return nil, fmt.Errorf("writing .pt: tensor %s has %d bytes of data, want %d", v, len(v.Data), n*v.DType.Size())
		}
		key := strconv.Itoa(len(*tensors))
		*tensors = append(*tensors, v)
		shape := make(pickle.Tuple, len(v.Shape))
		stride := make(pickle.Tuple, len(v.Shape))
		s := 1
		for i := len(v.Shape) - 1; i >= 0; i-- {
			shape[i] = v.Shape[i]
			stride[i] = s
			s *= v.Shape[i]
		}
		pid := pickle.Tuple{"storage", pickle.Global{Module: "torch", Name: dtypeInfo[v.DType].storage}, key, "cpu", n}
		return &pickle.Reduce{Func: rebuildTensorV2, Args: pickle.Tuple{
			pickle.PersistentID{ID: pid}, 0, shape, stride, false, &pickle.OrderedDict{},
		}}, nil
	case *StateDict:
		od := &pickle.OrderedDict{Items: make([]pickle.Item, 0, v.Len()), State: v.Attrs}
		for _, name := range v.names {
			t, err := ptTree(v.tensors[name], tensors, depth+1)
			if err != nil {
				return nil, err
			}
			od.Items = append(od.Items, pickle.Item{Key: name, Value: t})
		}
		return od, nil
	case *Checkpoint:
		return ptTree(v.value(), tensors, depth+1)
	case pickle.Tuple:
		out := make(pickle.Tuple, len(v))
		for i, x := range v {
			c, err := ptTree(x, tensors, depth+1)
			if err != nil {
				return nil, err
			}
			out[i] = c
		}
		return out, nil
	case pickle.List:
		out, err := ptTree(pickle.Tuple(v), tensors, depth)
		if err != nil {
			return nil, err
		}
		return pickle.List(out.(pickle.Tuple)), nil
	case *pickle.Dict:
		items, err := ptItems(v.Items, tensors, depth)
		return &pickle.Dict{Items: items}, err
	case *pickle.OrderedDict:
		items, err := ptItems(v.Items, tensors, depth)
		return &pickle.OrderedDict{Items: items, State: v.State}, err
	}
	return v, nil
}

func ptItems(items []pickle.Item, tensors *[]*Tensor, depth int) ([]pickle.Item, error) {
	out := make([]pickle.Item, len(items))
	for i, it := range items {
		val, err := ptTree(it.Value, tensors, depth+1)
		if err != nil {
			return nil, err
		}
		out[i] = pickle.Item{Key: it.Key, Value: val}
	}
	return out, nil
}

// ptZipWriter writes the zip layout torch's PyTorchStreamWriter (miniz)
// writes: stored entries, data aligned to 64 bytes with an "FB" extra field,
// a data descriptor after each non-empty entry, and a zip64 end record.
type ptZipWriter struct {
	w       *bufio.Writer
	off     uint64
	entries []zipEntry
	err     error
}

type zipEntry struct {
	name      string
	crc, size uint32
	off       uint64
	flags     uint16
}

func (z *ptZipWriter) write(b []byte) {
	if z.err != nil {
		return
	}
	n, err := z.w.Write(b)
	z.off += uint64(n)
	z.err = err
}

func (z *ptZipWriter) add(name string, data []byte) {
	if z.err != nil {
		return
	}
	if uint64(len(data)) >= math.MaxUint32 || z.off >= math.MaxUint32 {
		z.err = errors.New("writing .pt: files of 4 GiB or more are not supported")
		return
	}
	e := zipEntry{name: name, off: z.off, size: uint32(len(data)), flags: 0x0808}
	if len(data) == 0 {
		e.flags = 0x0800
	}
	pad := (64 - (z.off+30+uint64(len(name))+4)%64) % 64
	h := make([]byte, 30, 30+len(name)+4+int(pad))
	binary.LittleEndian.PutUint32(h[0:], 0x04034b50)
	binary.LittleEndian.PutUint16(h[6:], e.flags)
	binary.LittleEndian.PutUint16(h[26:], uint16(len(name)))
	binary.LittleEndian.PutUint16(h[28:], uint16(4+pad))
	h = append(h, name...)
	h = append(h, 'F', 'B', byte(pad), byte(pad>>8))
	for i := uint64(0); i < pad; i++ {
		h = append(h, 'Z')
	}
	z.write(h)
	e.crc = crc32.ChecksumIEEE(data)
	z.write(data)
	if len(data) > 0 {
		var d [16]byte
		binary.LittleEndian.PutUint32(d[0:], 0x08074b50)
		binary.LittleEndian.PutUint32(d[4:], e.crc)
		binary.LittleEndian.PutUint32(d[8:], e.size)
		binary.LittleEndian.PutUint32(d[12:], e.size)
		z.write(d[:])
	}
	z.entries = append(z.entries, e)
}

func (z *ptZipWriter) finish() error {
	cdStart := z.off
	for _, e := range z.entries {
		c := make([]byte, 46, 46+len(e.name))
		binary.LittleEndian.PutUint32(c[0:], 0x02014b50)
		binary.LittleEndian.PutUint16(c[8:], e.flags)
		binary.LittleEndian.PutUint32(c[16:], e.crc)
		binary.LittleEndian.PutUint32(c[20:], e.size)
		binary.LittleEndian.PutUint32(c[24:], e.size)
		binary.LittleEndian.PutUint16(c[28:], uint16(len(e.name)))
		binary.LittleEndian.PutUint32(c[42:], uint32(e.off))
		z.write(append(c, e.name...))
	}
	cdSize := z.off - cdStart
	z64 := z.off
	n := uint64(len(z.entries))
	var r [56 + 20 + 22]byte
	binary.LittleEndian.PutUint32(r[0:], 0x06064b50)
	binary.LittleEndian.PutUint64(r[4:], 44)
	binary.LittleEndian.PutUint16(r[12:], 0x031e)
	binary.LittleEndian.PutUint16(r[14:], 45)
	binary.LittleEndian.PutUint64(r[24:], n)
	binary.LittleEndian.PutUint64(r[32:], n)
	binary.LittleEndian.PutUint64(r[40:], cdSize)
	binary.LittleEndian.PutUint64(r[48:], cdStart)
	l := r[56:]
	binary.LittleEndian.PutUint32(l[0:], 0x07064b50)
	binary.LittleEndian.PutUint64(l[8:], z64)
	binary.LittleEndian.PutUint32(l[16:], 1)
	e := r[76:]
	binary.LittleEndian.PutUint32(e[0:], 0x06054b50)
	binary.LittleEndian.PutUint16(e[8:], uint16(n))
	binary.LittleEndian.PutUint16(e[10:], uint16(n))
	binary.LittleEndian.PutUint32(e[12:], uint32(cdSize))
	binary.LittleEndian.PutUint32(e[16:], uint32(cdStart))
	z.write(r[:])
	if z.err != nil {
		return z.err
	}
	return z.w.Flush()
}
