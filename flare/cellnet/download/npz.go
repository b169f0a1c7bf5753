package download

import (
	"archive/zip"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"strings"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/npy"
	"github.com/flarego/flarego/persistor"
)

// An .npz is a zip of .npy members, one per array, named after the array
// with ".npy" added. NVFlare's ArrayDownloadable makes one .npz per item
// with np.savez(allow_pickle=False, file=…, **{item: array}); numpy
// before 2.1 has no allow_pickle parameter there and saves it as one more
// array, a 0-d bool "allow_pickle", first. The writer below writes the
// same bytes as numpy (with Python 3.11's zipfile: stored, no time, a
// zip64 extra field in each local header, mode 0600); the reader takes
// any zip archive/zip reads, stored or deflated (np.savez_compressed).

// allowPickle is the member numpy < 2.1 adds; the reader skips it.
const allowPickle = "allow_pickle"

// member is one .npy member to write: its npy header and data apart, so
// that the data are the array's own bytes, never copied until written.
type member struct {
	name   string // with ".npy"
	header []byte
	data   []byte
	crc    uint32
}

func newMember(name string, t *persistor.Tensor) (member, error) {
	h, err := npy.Header(t)
	if err != nil {
		return member{}, err
	}
	crc := crc32.Update(crc32.ChecksumIEEE(h), crc32.IEEETable, t.Data)
	return member{name: name + ".npy", header: h, data: t.Data, crc: crc}, nil
}

func (m *member) size() int { return len(m.header) + len(m.data) }

// allowPickleMember is numpy's np.array(False) member.
var allowPickleMember = func() member {
	m, err := newMember(allowPickle, &persistor.Tensor{DType: persistor.Bool, Shape: []int{}, Data: []byte{0}})
	if err != nil {
		panic(err) // a bool scalar always has a header
	}
	return m
}()

// Zip record sizes.
const (
	localLen   = 30
	zip64Len   = 20 // the zip64 extra field zipfile writes in local headers
	centralLen = 46
	endLen     = 22
	// maxMember is the largest member the 32-bit sizes hold; a msgpack
	// bin, which carries a chunk, is no larger either.
	maxMember = 1<<32 - 1 - 1<<16
)

// npzLen is the size of the .npz of ms.
func npzLen(ms []member) int {
	n := endLen
	for i := range ms {
		n += localLen + zip64Len + centralLen + 2*len(ms[i].name) + ms[i].size()
	}
	return n
}

// appendNPZ appends the .npz of ms to b.
func appendNPZ(b []byte, ms []member) []byte {
	le := binary.LittleEndian
	start := len(b)
	offsets := make([]int, len(ms))
	for i := range ms {
		m := &ms[i]
		offsets[i] = len(b) - start
		size := uint32(m.size())
		b = le.AppendUint32(b, 0x04034b50)
		b = le.AppendUint16(b, 20)   // version needed
		b = le.AppendUint16(b, 0)    // flags
		b = le.AppendUint16(b, 0)    // stored
		b = le.AppendUint16(b, 0)    // time 00:00:00
		b = le.AppendUint16(b, 0x21) // date 1980-01-01
		b = le.AppendUint32(b, m.crc)
		b = le.AppendUint32(b, size)
		b = le.AppendUint32(b, size)
		b = le.AppendUint16(b, uint16(len(m.name)))
		b = le.AppendUint16(b, zip64Len)
		b = append(b, m.name...)
		b = le.AppendUint16(b, 1) // zip64 extra: sizes, 64-bit
		b = le.AppendUint16(b, 16)
		b = le.AppendUint64(b, uint64(size))
		b = le.AppendUint64(b, uint64(size))
		b = append(b, m.header...)
		b = append(b, m.data...)
	}
	dir := len(b) - start
	for i := range ms {
		m := &ms[i]
		size := uint32(m.size())
		b = le.AppendUint32(b, 0x02014b50)
		b = le.AppendUint16(b, 0x0314) // made by: Unix, 2.0
		b = le.AppendUint16(b, 20)
		b = le.AppendUint16(b, 0)
		b = le.AppendUint16(b, 0)
		b = le.AppendUint16(b, 0)
		b = le.AppendUint16(b, 0x21)
		b = le.AppendUint32(b, m.crc)
		b = le.AppendUint32(b, size)
		b = le.AppendUint32(b, size)
		b = le.AppendUint16(b, uint16(len(m.name)))
		b = le.AppendUint16(b, 0) // extra
		b = le.AppendUint16(b, 0) // comment
		b = le.AppendUint16(b, 0) // disk
		b = le.AppendUint16(b, 0) // internal attributes
		b = le.AppendUint32(b, 0o600<<16)
		b = le.AppendUint32(b, uint32(offsets[i]))
		b = append(b, m.name...)
	}
	end := len(b) - start
	b = le.AppendUint32(b, 0x06054b50)
	b = le.AppendUint16(b, 0)
	b = le.AppendUint16(b, 0)
	b = le.AppendUint16(b, uint16(len(ms)))
	b = le.AppendUint16(b, uint16(len(ms)))
	b = le.AppendUint32(b, uint32(end-dir))
	b = le.AppendUint32(b, uint32(dir))
	return le.AppendUint16(b, 0)
}

// ErrNPZ is wrapped by the errors of a chunk that is not a good .npz.
var ErrNPZ = errors.New("bad .npz")

// budget is what is left of a batch's limits.
type budget struct {
	items int
	bytes int64 // arrays' bytes
}

// readNPZ reads the arrays of the .npz b, taking them from the budget:
// a member declaring more than is left is an error before anything is
// read. A stored member's array is b's own bytes.
func readNPZ(b []byte, left *budget) ([]flare.NamedArray, error) {
	zr, err := zip.NewReader(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNPZ, err)
	}
	if len(zr.File) > left.items+1 { // +1: allow_pickle
		return nil, fmt.Errorf("%w: %d members, more than the %d arrays left of the limit: %w", ErrNPZ, len(zr.File), left.items, ErrLimit)
	}
	var out []flare.NamedArray
	for _, f := range zr.File {
		id, ok := strings.CutSuffix(f.Name, ".npy")
		if !ok {
			return nil, fmt.Errorf("%w: member %s is not an .npy", ErrNPZ, flare.LogSafe(f.Name))
		}
		if id == allowPickle {
			continue
		}
		if left.items == 0 {
			return nil, fmt.Errorf("%w: more arrays than the limit: %w", ErrNPZ, ErrLimit)
		}
		data, err := memberData(b, f, left.bytes)
		if err != nil {
			return nil, fmt.Errorf("%w: member %s: %w", ErrNPZ, flare.LogSafe(f.Name), err)
		}
		t, err := npy.Decode(data)
		if err != nil {
			return nil, fmt.Errorf("%w: member %s: %w", ErrNPZ, flare.LogSafe(f.Name), err)
		}
		left.items--
		left.bytes -= int64(len(data))
		out = append(out, flare.NamedArray{Name: id, Array: t})
	}
	return out, nil
}

// memberData is the content of f, at most max bytes.
func memberData(b []byte, f *zip.File, max int64) ([]byte, error) {
	if f.Flags&1 != 0 {
		return nil, errors.New("encrypted")
	}
	size := f.UncompressedSize64
	if size > uint64(max) {
		return nil, fmt.Errorf("declares %d bytes, more than the %d left of the limit: %w", size, max, ErrLimit)
	}
	if f.CompressedSize64 > uint64(len(b)) {
		return nil, fmt.Errorf("declares %d compressed bytes in an .npz of %d", f.CompressedSize64, len(b))
	}
	switch f.Method {
	case zip.Store:
		if f.CompressedSize64 != size {
			return nil, fmt.Errorf("stored, yet declares %d bytes compressed and %d not", f.CompressedSize64, size)
		}
		off, err := f.DataOffset()
		if err != nil {
			return nil, err
		}
		if off < 0 || uint64(off) > uint64(len(b)) || size > uint64(len(b))-uint64(off) {
			return nil, fmt.Errorf("%d bytes at offset %d are past the end", size, off)
		}
		data := b[off : off+int64(size)]
		if crc32.ChecksumIEEE(data) != f.CRC32 {
			return nil, zip.ErrChecksum
		}
		return data, nil
	case zip.Deflate:
		rc, err := f.Open()
		if err != nil {
			return nil, err
		}
		defer rc.Close()
		data := make([]byte, size)
		if _, err := io.ReadFull(rc, data); err != nil {
			return nil, err
		}
		// Past the declared size there must be nothing; at the end the
		// zip reader checks the checksum.
		if n, err := rc.Read(make([]byte, 1)); n != 0 || err != io.EOF {
			if err == nil || err == io.EOF {
				err = errors.New("more bytes than declared")
			}
			return nil, err
		}
		return data, nil
	}
	return nil, fmt.Errorf("compression method %d", f.Method)
}
