package persistor

import (
	"archive/zip"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/big"
	"math/bits"
	"sort"
	"strings"

	"github.com/flarego/flarego/persistor/pickle"
)

// ErrNotPT reports bytes that are neither a zip nor a legacy torch file.
var ErrNotPT = errors.New("not a PyTorch .pt file")

// What a .pt may make the reader allocate beyond the file itself (records
// inflated and tensors gathered from strided views, together) is at most
// allocRatio times the file's size plus allocSlack. torch writes records
// stored, and a state dict holds each tensor once, so real files need
// nothing of it; a zip whose records inflate past it, or expanded (stride 0)
// views that repeat a few elements millions of times, are refused.
const (
	allocRatio = 8
	allocSlack = 16 << 20
)

// legacyMagic is the legacy format's first pickle: PROTO 2, LONG1 of
// 0x1950a86a20f9469cfc6c.
var legacyMagic = []byte{0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19}

// ReadPTFile reads a .pt file; see DecodePT.
func ReadPTFile(name string) (any, error) {
	data, err := ReadRegular(name, maxModelFileBytes, "a model file")
	if err != nil {
		return nil, err
	}
	v, err := DecodePT(data)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", name, err)
	}
	return v, nil
}

// DecodePT decodes what torch.save wrote (zip or legacy format) without
// executing anything: only tensors, storages, OrderedDict and plain Python
// values are accepted. Tensors come back as *Tensor; the rest as the values
// of package pickle. Tensor data aliases data where the file stores it
// contiguously, so data must not be modified afterwards.
func DecodePT(data []byte) (any, error) {
	if bytes.HasPrefix(data, legacyMagic) {
		return decodeLegacy(data)
	}
	if len(data) < 22 {
		return nil, fmt.Errorf("%w (%d bytes)", ErrNotPT, len(data))
	}
	zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNotPT, err)
	}
	return decodeZip(data, zr)
}

// storageRef is one storage: its dtype and bytes (filled later in the
// legacy format).
type storageRef struct {
	dtype DType
	numel int
	data  []byte
	root  *storageRef // legacy views
	off   int         // element offset into root
}

func (s *storageRef) bytes() []byte {
	if s.root != nil {
		sz := s.dtype.Size()
		return s.root.bytes()[s.off*sz : (s.off+s.numel)*sz]
	}
	return s.data
}

// pendingTensor is a tensor whose storage may not be read yet.
type pendingTensor struct {
	t       *Tensor
	storage *storageRef
	offset  int
	stride  []int
}

type storageClass struct{ dtype DType }

type ptDecoder struct {
	pending  []pendingTensor
	storages map[string]*storageRef
	load     func(key string, dtype DType, numel int) (*storageRef, error)
	// alloc is what the file may still make us allocate (see allocRatio).
	alloc int64
}

func newPTDecoder(fileSize int) *ptDecoder {
	return &ptDecoder{storages: map[string]*storageRef{}, alloc: allocRatio*int64(fileSize) + allocSlack}
}

// reserve takes n bytes from the allocation budget, or says why not.
func (d *ptDecoder) reserve(n uint64, what string) error {
	if n > uint64(d.alloc) {
		return fmt.Errorf("%s would take %d bytes, more than this file may make us allocate (%d× its size + %d MiB in all)", what, n, allocRatio, allocSlack>>20)
	}
	d.alloc -= int64(n)
	return nil
}

func (d *ptDecoder) unpickler() *pickle.Unpickler {
	allowed := map[pickle.Global]any{
		{Module: "collections", Name: "OrderedDict"}:         nil, // built into the unpickler
		{Module: "torch._utils", Name: "_rebuild_tensor_v2"}: pickle.Func(d.rebuildTensor),
		{Module: "torch._utils", Name: "_rebuild_parameter"}: pickle.Func(rebuildParameter),
		{Module: "torch", Name: "Size"}: pickle.Func(func(args ...any) (any, error) {
			if len(args) != 1 {
				return nil, errors.New("torch.Size takes one argument")
			}
			return args[0], nil
		}),
	}
	for dt, info := range dtypeInfo {
		allowed[pickle.Global{Module: "torch", Name: info.storage}] = storageClass{DType(dt)}
	}
	return &pickle.Unpickler{Allowed: allowed, PersistentLoad: d.persistentLoad, MaxBytes: 256 << 20}
}

func (d *ptDecoder) persistentLoad(pid any) (any, error) {
	t, ok := pid.(pickle.Tuple)
	if !ok || len(t) < 5 || t[0] != "storage" {
		return nil, fmt.Errorf("unexpected persistent id %v", pid)
	}
	sc, ok1 := t[1].(storageClass)
	key, ok2 := t[2].(string)
	numel, ok3 := t[4].(int64)
	if !ok1 || !ok2 || !ok3 || numel < 0 || numel > maxElements {
		return nil, fmt.Errorf("malformed storage id %v", pid)
	}
	if s, ok := d.storages[key]; ok {
		if s.dtype != sc.dtype {
			return nil, fmt.Errorf("storage %q used as %s and %s", key, s.dtype, sc.dtype)
		}
		return s, nil
	}
	s, err := d.load(key, sc.dtype, int(numel))
	if err != nil {
		return nil, err
	}
	d.storages[key] = s
	if len(t) >= 6 && t[5] != nil { // legacy view: (view_key, offset, view_numel)
		vm, ok := t[5].(pickle.Tuple)
		if !ok || len(vm) != 3 {
			return nil, fmt.Errorf("malformed storage view %v", t[5])
		}
		vkey, ok1 := vm[0].(string)
		off, ok2 := vm[1].(int64)
		vn, ok3 := vm[2].(int64)
		if !ok1 || !ok2 || !ok3 || off < 0 || vn < 0 || off+vn > numel {
			return nil, fmt.Errorf("malformed storage view %v", t[5])
		}
		if v, ok := d.storages[vkey]; ok {
			return v, nil
		}
		v := &storageRef{dtype: sc.dtype, numel: int(vn), root: s, off: int(off)}
		d.storages[vkey] = v
		return v, nil
	}
	return s, nil
}

func toInt(v any) (int, bool) {
	switch v := v.(type) {
	case int:
		return v, true
	case int64:
		return int(v), true
	case *big.Int:
		if v.IsInt64() {
			return int(v.Int64()), true
		}
	}
	return 0, false
}

func toInts(v any) ([]int, bool) {
	t, ok := v.(*pickle.GoTuple)
	if !ok {
		if pt, ok2 := v.(pickle.Tuple); ok2 {
			t2 := pickle.GoTuple(pt)
			t, ok = &t2, true
		}
	}
	if !ok || t.Len() > 64 {
		return nil, false
	}
	out := make([]int, t.Len())
	for i := range out {
		n, ok := toInt(t.Get(i))
		if !ok {
			return nil, false
		}
		out[i] = n
	}
	return out, true
}

// rebuildTensor stands for torch._utils._rebuild_tensor_v2(storage,
// storage_offset, size, stride, requires_grad, backward_hooks[, metadata]).
func (d *ptDecoder) rebuildTensor(args ...any) (any, error) {
	if len(args) != 6 && len(args) != 7 {
		return nil, fmt.Errorf("_rebuild_tensor_v2 takes 6 or 7 arguments, got %d", len(args))
	}
	s, ok := args[0].(*storageRef)
	if !ok {
		return nil, fmt.Errorf("_rebuild_tensor_v2: first argument is not a storage")
	}
	off, ok1 := toInt(args[1])
	size, ok2 := toInts(args[2])
	stride, ok3 := toInts(args[3])
	if !ok1 || !ok2 || !ok3 || len(size) != len(stride) || off < 0 {
		return nil, fmt.Errorf("_rebuild_tensor_v2: malformed offset, size or stride")
	}
	n, err := numel(size)
	if err != nil {
		return nil, fmt.Errorf("_rebuild_tensor_v2: %w", err)
	}
	for _, st := range stride {
		if st < 0 || st > maxElements {
			return nil, fmt.Errorf("_rebuild_tensor_v2: bad stride %v", stride)
		}
	}
	// The last element the view touches must lie inside the storage. Each
	// step is checked against the storage, so the sum cannot wrap.
	if n > 0 {
		past := func() error {
			return fmt.Errorf("tensor of shape %v (offset %d, stride %v) reaches past its storage of %d elements", size, off, stride, s.numel)
		}
		last := uint64(off)
		if last >= uint64(s.numel) {
			return nil, past()
		}
		for i, sz := range size {
			hi, step := bits.Mul64(uint64(sz-1), uint64(stride[i]))
			if hi != 0 || step >= uint64(s.numel)-last {
				return nil, past()
			}
			last += step
		}
	}
	t := &Tensor{DType: s.dtype, Shape: size}
	d.pending = append(d.pending, pendingTensor{t: t, storage: s, offset: off, stride: stride})
	return t, nil
}

func rebuildParameter(args ...any) (any, error) {
	if len(args) != 3 {
		return nil, fmt.Errorf("_rebuild_parameter takes 3 arguments, got %d", len(args))
	}
	t, ok := args[0].(*Tensor)
	if !ok {
		return nil, errors.New("_rebuild_parameter: first argument is not a tensor")
	}
	return t, nil
}

// materialize gives every tensor its data, aliasing contiguous views and
// gathering strided ones.
func (d *ptDecoder) materialize() error {
	for _, p := range d.pending {
		src := p.storage.bytes()
		if len(src) < p.storage.numel*p.storage.dtype.Size() {
			return fmt.Errorf("storage holds %d bytes, fewer than its %d elements", len(src), p.storage.numel)
		}
		sz := p.t.DType.Size()
		n := p.t.NumElements()
		if n == 0 { // torch does not check an empty view's offset
			p.t.Data = []byte{}
			continue
		}
		if isContiguous(p.t.Shape, p.stride) {
			p.t.Data = src[p.offset*sz : (p.offset+n)*sz : (p.offset+n)*sz]
			continue
		}
		// torch keeps a strided view over its storage; we gather it, which an
		// expanded view (stride 0) would turn from a few bytes into terabytes.
		what := fmt.Sprintf("gathering the view of shape %v (stride %v) of a %d-element storage", p.t.Shape, p.stride, p.storage.numel)
		if err := d.reserve(uint64(n)*uint64(sz), what); err != nil {
			return err
		}
		out := make([]byte, n*sz)
		idx := make([]int, len(p.t.Shape))
		for i := 0; i < n; i++ {
			e := p.offset
			for k := range idx {
				e += idx[k] * p.stride[k]
			}
			copy(out[i*sz:], src[e*sz:(e+1)*sz])
			for k := len(idx) - 1; k >= 0; k-- {
				idx[k]++
				if idx[k] < p.t.Shape[k] {
					break
				}
				idx[k] = 0
			}
		}
		p.t.Data = out
	}
	return nil
}

func isContiguous(shape, stride []int) bool {
	want := 1
	for i := len(shape) - 1; i >= 0; i-- {
		if shape[i] != 1 && stride[i] != want {
			return false
		}
		want *= shape[i]
	}
	return true
}

func decodeZip(data []byte, zr *zip.Reader) (any, error) {
	if len(zr.File) == 0 {
		return nil, fmt.Errorf("%w: empty zip", ErrNotPT)
	}
	// torch takes the archive's folder from its first entry.
	prefix, _, ok := strings.Cut(zr.File[0].Name, "/")
	if !ok {
		return nil, fmt.Errorf("%w: zip entries are not in a folder", ErrNotPT)
	}
	if err := checkNoOverlap(zr.File, len(data)); err != nil {
		return nil, err
	}
	files := make(map[string]*zip.File, len(zr.File))
	for _, f := range zr.File {
		files[f.Name] = f
	}
	d := newPTDecoder(len(data))
	if _, ok := files[prefix+"/constants.pkl"]; ok {
		return nil, errors.New("TorchScript archives are not supported (save a state dict instead)")
	}
	pkl, ok := files[prefix+"/data.pkl"]
	if !ok {
		return nil, fmt.Errorf("%w: no %s/data.pkl", ErrNotPT, prefix)
	}
	if bo, ok := files[prefix+"/byteorder"]; ok {
		b, err := d.record(data, bo)
		if err != nil {
			return nil, err
		}
		if string(b) != "little" {
			return nil, fmt.Errorf("byte order %q is not supported", b)
		}
	}
	d.load = func(key string, dtype DType, n int) (*storageRef, error) {
		f, ok := files[prefix+"/data/"+key]
		if !ok {
			return nil, fmt.Errorf("storage record %s/data/%s is missing", prefix, key)
		}
		b, err := d.record(data, f)
		if err != nil {
			return nil, err
		}
		if len(b) < n*dtype.Size() {
			return nil, fmt.Errorf("storage record %s holds %d bytes, fewer than %d %s elements", f.Name, len(b), n, dtype)
		}
		return &storageRef{dtype: dtype, numel: n, data: b}, nil
	}
	p, err := d.record(data, pkl)
	if err != nil {
		return nil, err
	}
	v, _, err := d.unpickler().Unpickle(p)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", pkl.Name, err)
	}
	if err := d.materialize(); err != nil {
		return nil, err
	}
	return v, nil
}

// checkNoOverlap refuses a zip whose entries share bytes, or run past its
// end. torch writes each record once, one after the other; entries that
// overlap (one deflate stream read as many records, local headers inside
// another entry's data) are how a small zip stands for gigabytes.
func checkNoOverlap(fs []*zip.File, size int) error {
	type span struct {
		start, end uint64
		name       string
	}
	spans := make([]span, 0, len(fs))
	for _, f := range fs {
		off, err := f.DataOffset()
		if err != nil {
			return fmt.Errorf("%w: entry %s: %v", ErrNotPT, f.Name, err)
		}
		if off < 0 || f.CompressedSize64 > uint64(size) || uint64(off) > uint64(size)-f.CompressedSize64 {
			return fmt.Errorf("record %s: size %d runs past the end of the file (truncated?)", f.Name, f.CompressedSize64)
		}
		spans = append(spans, span{uint64(off), uint64(off) + f.CompressedSize64, f.Name})
	}
	sort.Slice(spans, func(i, j int) bool { return spans[i].start < spans[j].start })
	for i := 1; i < len(spans); i++ {
		if prev := spans[i-1]; spans[i].start < prev.end {
			return fmt.Errorf("records %s and %s overlap in the zip (a zip bomb?)", prev.name, spans[i].name)
		}
	}
	return nil
}

// record returns a zip entry's bytes: a slice of data for stored entries,
// an inflate bounded by the allocation budget for deflated ones, allocated
// as the bytes come rather than as the header declares. The CRC is checked
// either way.
func (d *ptDecoder) record(data []byte, f *zip.File) ([]byte, error) {
	var b []byte
	switch f.Method {
	case zip.Store:
		off, err := f.DataOffset()
		if err != nil {
			return nil, fmt.Errorf("record %s: %w", f.Name, err)
		}
		end := uint64(off) + f.UncompressedSize64
		if off < 0 || f.CompressedSize64 != f.UncompressedSize64 || end > uint64(len(data)) || end < uint64(off) {
			return nil, fmt.Errorf("record %s: size %d runs past the end of the file (truncated?)", f.Name, f.UncompressedSize64)
		}
		b = data[off:end:end]
	case zip.Deflate:
		// Deflate expands at most 1032 to 1; checkNoOverlap bounded the
		// compressed size by the file's.
		if f.UncompressedSize64 > 1100*f.CompressedSize64+1024 {
			return nil, fmt.Errorf("record %s: claims an impossible size %d", f.Name, f.UncompressedSize64)
		}
		if err := d.reserve(f.UncompressedSize64, "inflating record "+f.Name); err != nil {
			return nil, err
		}
		rc, err := f.Open()
		if err != nil {
			return nil, fmt.Errorf("record %s: %w", f.Name, err)
		}
		defer rc.Close()
		var buf bytes.Buffer
		buf.Grow(int(min(f.UncompressedSize64, 1<<20)))
		_, err = buf.ReadFrom(io.LimitReader(rc, int64(f.UncompressedSize64)+1))
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("record %s: inflates to fewer bytes than the %d its header declares (truncated?)", f.Name, f.UncompressedSize64)
		}
		if err != nil {
			return nil, fmt.Errorf("record %s: %w", f.Name, err)
		}
		if uint64(buf.Len()) != f.UncompressedSize64 {
			return nil, fmt.Errorf("record %s: inflates to %d bytes, not the %d its header declares", f.Name, buf.Len(), f.UncompressedSize64)
		}
		b = buf.Bytes()
	default:
		return nil, fmt.Errorf("record %s: compression method %d is not supported", f.Name, f.Method)
	}
	if crc32.ChecksumIEEE(b) != f.CRC32 {
		return nil, fmt.Errorf("record %s: checksum mismatch (corrupt file)", f.Name)
	}
	return b, nil
}

func decodeLegacy(data []byte) (any, error) {
	d := newPTDecoder(len(data))
	d.load = func(key string, dtype DType, n int) (*storageRef, error) {
		return &storageRef{dtype: dtype, numel: n}, nil
	}
	u := d.unpickler()
	pos := 0
	next := func(what string) (any, error) {
		v, n, err := u.Unpickle(data[pos:])
		if err != nil {
			return nil, fmt.Errorf("legacy %s: %w", what, err)
		}
		pos += n
		return v, nil
	}
	if _, err := next("magic number"); err != nil {
		return nil, err
	}
	proto, err := next("protocol version")
	if err != nil {
		return nil, err
	}
	if proto != int64(1001) {
		return nil, fmt.Errorf("legacy format: protocol version %v, want 1001", proto)
	}
	info, err := next("system info")
	if err != nil {
		return nil, err
	}
	if di, ok := info.(*pickle.Dict); ok {
		if le, ok := di.Get("little_endian"); ok && le != true {
			return nil, errors.New("legacy format: big-endian files are not supported")
		}
	}
	obj, err := next("object")
	if err != nil {
		return nil, err
	}
	keysV, err := next("storage keys")
	if err != nil {
		return nil, err
	}
	keys, ok := keysV.(pickle.List)
	if !ok {
		return nil, errors.New("legacy format: storage keys are not a list")
	}
	listed := make(map[string]bool, len(keys))
	for _, kv := range keys {
		key, _ := kv.(string)
		s, ok := d.storages[key]
		if !ok || s.root != nil {
			return nil, fmt.Errorf("legacy format: unknown storage %v", kv)
		}
		// torch reads one storage's bytes per key, so a key listed twice
		// would take the next storage's; it refuses that, and so do we.
		if listed[key] {
			return nil, fmt.Errorf("legacy format: storage %s is listed twice", key)
		}
		listed[key] = true
		if len(data)-pos < 8 {
			return nil, fmt.Errorf("legacy format: storage %s truncated", key)
		}
		n := binary.LittleEndian.Uint64(data[pos:])
		pos += 8
		sz := uint64(s.dtype.Size())
		if n != uint64(s.numel) || n*sz > uint64(len(data)-pos) {
			return nil, fmt.Errorf("legacy format: storage %s has %d elements, file has room for %d", key, s.numel, uint64(len(data)-pos)/sz)
		}
		s.data = data[pos : pos+int(n*sz)]
		pos += int(n * sz)
	}
	for key, s := range d.storages {
		if s.root == nil && s.data == nil && s.numel > 0 {
			return nil, fmt.Errorf("legacy format: storage %s has no data", key)
		}
	}
	if err := d.materialize(); err != nil {
		return nil, err
	}
	return obj, nil
}
