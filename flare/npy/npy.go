// Package npy reads and writes numpy's .npy format (what np.save writes),
// in which NVFlare 2.4+ carries numpy arrays: a FOBS ndarray's bytes, and
// each member of the .npz its download service serves.
//
// [Decode] takes versions 1 to 3 of the format, C order, the dtypes a
// model holds (float16/32/64, int8/16/32/64, uint8, bool) in little-endian
// or byte order "|", and checks the declared shape against the bytes
// present before it uses them; the tensor's data is the input's own bytes.
// [Encode] writes version 1 as numpy does, [Header] its header alone.
// [DType] maps numpy's type codes ("f4") to the persistor's dtypes.
package npy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/flarego/flarego/persistor"
)

var codes = map[string]persistor.DType{
	"f4": persistor.Float32, "f8": persistor.Float64, "f2": persistor.Float16,
	"i8": persistor.Int64, "i4": persistor.Int32, "i2": persistor.Int16, "i1": persistor.Int8,
	"u1": persistor.Uint8, "b1": persistor.Bool,
}

// DType is the dtype of a numpy type code such as "f4".
func DType(code string) (persistor.DType, bool) {
	d, ok := codes[code]
	return d, ok
}

// Code is numpy's type code of d ("f4"), "" if numpy has none (bfloat16).
func Code(d persistor.DType) string {
	for c, x := range codes {
		if x == d {
			return c
		}
	}
	return ""
}

var magic = "\x93NUMPY"

// ErrNPY is wrapped by the errors of a malformed or unsupported .npy.
var ErrNPY = errors.New("bad .npy data")

// maxHeader bounds a .npy header (numpy writes under 128 bytes for the
// shapes here; it reads up to 10000).
const maxHeader = 10000

// Decode reads the array that is all of b.
func Decode(b []byte) (*persistor.Tensor, error) {
	if len(b) < 10 || string(b[:6]) != magic {
		return nil, fmt.Errorf("%w: no .npy magic", ErrNPY)
	}
	var hlen, off int
	switch b[6] {
	case 1:
		hlen, off = int(binary.LittleEndian.Uint16(b[8:])), 10
	case 2, 3:
		if len(b) < 12 {
			return nil, fmt.Errorf("%w: truncated header", ErrNPY)
		}
		hlen, off = int(binary.LittleEndian.Uint32(b[8:])), 12
	default:
		return nil, fmt.Errorf("%w: format version %d", ErrNPY, b[6])
	}
	if hlen > maxHeader || off+hlen > len(b) {
		return nil, fmt.Errorf("%w: a header of %d bytes in %d", ErrNPY, hlen, len(b))
	}
	descr, fortran, shape, err := parseHeader(string(b[off : off+hlen]))
	if err != nil {
		return nil, err
	}
	if fortran {
		return nil, fmt.Errorf("%w: Fortran order is not supported", ErrNPY)
	}
	if len(descr) < 2 || (descr[0] != '<' && descr[0] != '|') {
		return nil, fmt.Errorf("%w: dtype %q (little-endian only)", ErrNPY, descr)
	}
	dt, ok := codes[descr[1:]]
	if !ok {
		return nil, fmt.Errorf("%w: dtype %q is not supported", ErrNPY, descr)
	}
	data := b[off+hlen:]
	n := int64(dt.Size())
	for _, d := range shape {
		if d < 0 || (d > 0 && n > int64(len(data))/int64(d)) {
			return nil, fmt.Errorf("%w: shape %v of %s is more than the %d bytes present", ErrNPY, shape, dt, len(data))
		}
		n *= int64(d)
	}
	if n != int64(len(data)) {
		return nil, fmt.Errorf("%w: shape %v of %s needs %d bytes, %d are present", ErrNPY, shape, dt, n, len(data))
	}
	return &persistor.Tensor{DType: dt, Shape: shape, Data: data}, nil
}

// parseHeader reads the dict literal numpy writes:
// {'descr': '<f4', 'fortran_order': False, 'shape': (3, 3), }
func parseHeader(h string) (descr string, fortran bool, shape []int, err error) {
	bad := func(why string) error { return fmt.Errorf("%w: header %s: %s", ErrNPY, strconv.Quote(h), why) }
	s := strings.TrimSpace(h)
	if !strings.HasPrefix(s, "{") || !strings.HasSuffix(s, "}") {
		return "", false, nil, bad("not a dict")
	}
	s = s[1 : len(s)-1]
	seen := map[string]bool{}
	for {
		s = strings.TrimLeft(s, " ,")
		if s == "" {
			break
		}
		key, rest, ok := quoted(s)
		if !ok {
			return "", false, nil, bad("bad key")
		}
		rest = strings.TrimLeft(rest, " ")
		if !strings.HasPrefix(rest, ":") {
			return "", false, nil, bad("no colon")
		}
		rest = strings.TrimLeft(rest[1:], " ")
		if seen[key] {
			return "", false, nil, bad("key twice")
		}
		seen[key] = true
		switch key {
		case "descr":
			if descr, rest, ok = quoted(rest); !ok {
				return "", false, nil, bad("bad descr")
			}
		case "fortran_order":
			switch {
			case strings.HasPrefix(rest, "False"):
				rest = rest[5:]
			case strings.HasPrefix(rest, "True"):
				fortran, rest = true, rest[4:]
			default:
				return "", false, nil, bad("bad fortran_order")
			}
		case "shape":
			end := strings.IndexByte(rest, ')')
			if !strings.HasPrefix(rest, "(") || end < 0 {
				return "", false, nil, bad("bad shape")
			}
			shape = []int{}
			for _, f := range strings.Split(rest[1:end], ",") {
				if f = strings.TrimSpace(f); f == "" {
					continue
				}
				d, err := strconv.Atoi(f)
				if err != nil || d < 0 || len(shape) == 32 {
					return "", false, nil, bad("bad shape")
				}
				shape = append(shape, d)
			}
			rest = rest[end+1:]
		default:
			return "", false, nil, bad("unknown key " + key)
		}
		s = rest
	}
	if !seen["descr"] || !seen["shape"] {
		return "", false, nil, bad("descr or shape missing")
	}
	return descr, fortran, shape, nil
}

func quoted(s string) (string, string, bool) {
	if len(s) < 2 || (s[0] != '\'' && s[0] != '"') {
		return "", s, false
	}
	end := strings.IndexByte(s[1:], s[0])
	if end < 0 {
		return "", s, false
	}
	return s[1 : 1+end], s[2+end:], true
}

// Encode writes t as np.save does (version 1, C order, little-endian):
// [Header], then t's data.
func Encode(t *persistor.Tensor) ([]byte, error) {
	h, err := Header(t)
	if err != nil {
		return nil, err
	}
	return append(append(make([]byte, 0, len(h)+len(t.Data)), h...), t.Data...), nil
}

// Header is what np.save writes before t's data: the magic, version 1,
// and the header dict, padded so that the data starts at a multiple of 64.
func Header(t *persistor.Tensor) ([]byte, error) {
	code := Code(t.DType)
	if code == "" {
		return nil, fmt.Errorf("npy: numpy has no %s", t.DType)
	}
	order := "<"
	if t.DType.Size() == 1 {
		order = "|"
	}
	var dims []string
	for _, d := range t.Shape {
		dims = append(dims, strconv.Itoa(d))
	}
	shape := "(" + strings.Join(dims, ", ")
	if len(dims) == 1 {
		shape += ","
	}
	shape += ")"
	h := fmt.Sprintf("{'descr': '%s%s', 'fortran_order': False, 'shape': %s, }", order, code, shape)
	// Padded with spaces and a newline so that the data starts at a
	// multiple of 64 (numpy ≥ 1.22; earlier versions used 16).
	total := len(magic) + 4 + len(h) + 1
	h += strings.Repeat(" ", (64-total%64)%64) + "\n"
	if len(h) > maxHeader {
		return nil, fmt.Errorf("npy: a header of %d bytes for shape %v", len(h), t.Shape)
	}
	out := make([]byte, 0, 10+len(h))
	out = append(out, magic...)
	out = append(out, 1, 0)
	out = binary.LittleEndian.AppendUint16(out, uint16(len(h)))
	return append(out, h...), nil
}
