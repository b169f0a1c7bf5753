// Package lobs is the container NVFlare's FOBS payloads travel in
// (fobs.dumps with buffer_list, "LOBS"): a main section, a msgpack body,
// and datums, values too large for the body (over 10 MB) or that the body
// refers to by id (a numpy array served for download, in 2.7.2+).
//
// A section is a header — marker, datum type and size (">BBQ", NVFlare
// 2.7+) or marker and size (">BQ", 2.4–2.6) — then size bytes. Marker 100
// is the main body; 101, 102 and 103 are text, blob and file datums, each
// a 16-byte id and its value. [Decode] checks every size against the
// bytes present and returns slices of its input (nothing is copied);
// [Container.Encode] writes a container as NVFlare does.
package lobs

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Section markers.
const (
	MarkerMain  = 100
	MarkerText  = 101
	MarkerBlob  = 102
	MarkerFile  = 103
	datumIDSize = 16
)

// Format is a section header layout.
type Format int

const (
	// V27 is NVFlare 2.7+'s ">BBQ": marker, datum type, size.
	V27 Format = iota
	// V24 is NVFlare 2.4–2.6's ">BQ": marker, size.
	V24
)

func (f Format) headerLen() int {
	if f == V24 {
		return 9
	}
	return 10
}

// A Container is a decoded LOBS payload.
type Container struct {
	Main   []byte // the msgpack body
	Datums []Datum
}

// A Datum is one value outside the main body.
type Datum struct {
	Marker byte // MarkerText, MarkerBlob or MarkerFile
	Type   byte // the datum type of a V27 header (0 in V24)
	ID     [datumIDSize]byte
	Value  []byte
}

// ErrLOBS is wrapped by the errors of a malformed container.
var ErrLOBS = errors.New("bad LOBS container")

// MaxDatums bounds the datums of one container.
const MaxDatums = 1 << 16

// Decode reads the container that is all of b, in format f.
func Decode(b []byte, f Format) (*Container, error) {
	c := &Container{}
	main := false
	for off := 0; off < len(b); {
		hl := f.headerLen()
		if len(b)-off < hl {
			return nil, fmt.Errorf("%w: %d bytes left at offset %d, less than a section header", ErrLOBS, len(b)-off, off)
		}
		marker := b[off]
		var typ byte
		var size uint64
		if f == V24 {
			size = binary.BigEndian.Uint64(b[off+1:])
		} else {
			typ, size = b[off+1], binary.BigEndian.Uint64(b[off+2:])
		}
		off += hl
		if size > uint64(len(b)-off) {
			return nil, fmt.Errorf("%w: section at offset %d declares %d bytes, %d are left", ErrLOBS, off-hl, size, len(b)-off)
		}
		body := b[off : off+int(size)]
		off += int(size)
		switch marker {
		case MarkerMain:
			if main {
				return nil, fmt.Errorf("%w: two main sections", ErrLOBS)
			}
			main, c.Main = true, body
		case MarkerText, MarkerBlob, MarkerFile:
			if len(body) < datumIDSize {
				return nil, fmt.Errorf("%w: a datum of %d bytes, shorter than its id", ErrLOBS, len(body))
			}
			if len(c.Datums) == MaxDatums {
				return nil, fmt.Errorf("%w: more than %d datums", ErrLOBS, MaxDatums)
			}
			d := Datum{Marker: marker, Type: typ, Value: body[datumIDSize:]}
			copy(d.ID[:], body)
			c.Datums = append(c.Datums, d)
		default:
			return nil, fmt.Errorf("%w: unknown section marker %d at offset %d", ErrLOBS, marker, off-hl-int(size))
		}
	}
	if !main {
		return nil, fmt.Errorf("%w: no main section", ErrLOBS)
	}
	return c, nil
}

// Datum returns the datum with id, or nil.
func (c *Container) Datum(id [datumIDSize]byte) *Datum {
	for i := range c.Datums {
		if c.Datums[i].ID == id {
			return &c.Datums[i]
		}
	}
	return nil
}

// Encode writes the container in format f: the main section, then the
// datums in order.
func (c *Container) Encode(f Format) []byte {
	n := f.headerLen() + len(c.Main)
	for _, d := range c.Datums {
		n += f.headerLen() + datumIDSize + len(d.Value)
	}
	out := make([]byte, 0, n)
	out = appendHeader(out, f, MarkerMain, 0, len(c.Main))
	out = append(out, c.Main...)
	for _, d := range c.Datums {
		out = appendHeader(out, f, d.Marker, d.Type, datumIDSize+len(d.Value))
		out = append(out, d.ID[:]...)
		out = append(out, d.Value...)
	}
	return out
}

func appendHeader(b []byte, f Format, marker, typ byte, size int) []byte {
	b = append(b, marker)
	if f == V27 {
		b = append(b, typ)
	}
	return binary.BigEndian.AppendUint64(b, uint64(size))
}
