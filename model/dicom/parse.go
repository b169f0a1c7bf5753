package dicom

import (
	"bufio"
	"compress/flate"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
)

const undefinedLength = 0xFFFFFFFF

const (
	tagGroupLength    = 0x00020000
	tagTransferSyntax = 0x00020010
	tagPixelData      = 0x7FE00010
	tagItem           = 0xFFFEE000
	tagItemDelim      = 0xFFFEE00D
	tagSeqDelim       = 0xFFFEE0DD
)

// vrs are the value representations of PS3.5 6.2, each mapped to itself
// (so that looking one up gives a string without allocating); longVRs are
// those whose explicit VR header has a 4-byte length (PS3.5 7.1.2).
var (
	vrs = map[string]string{}

	longVRs = map[string]bool{"OB": true, "OD": true, "OF": true, "OL": true, "OV": true, "OW": true,
		"SQ": true, "SV": true, "UC": true, "UN": true, "UR": true, "UT": true, "UV": true}
)

func init() {
	for _, v := range strings.Fields("AE AS AT CS DA DS DT FL FD IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV") {
		vrs[v] = v
	}
}

// An attribute is one the reader keeps: its name and VR (PS3.6), and its
// bit in decoder.seen.
type attribute struct {
	name string
	vr   string
	bit  uint
}

const (
	tagSamplesPerPixel     = 0x00280002
	tagPhotometric         = 0x00280004
	tagNumberOfFrames      = 0x00280008
	tagRows                = 0x00280010
	tagColumns             = 0x00280011
	tagBitsAllocated       = 0x00280100
	tagBitsStored          = 0x00280101
	tagHighBit             = 0x00280102
	tagPixelRepresentation = 0x00280103
	tagWindowCenter        = 0x00281050
	tagWindowWidth         = 0x00281051
	tagRescaleIntercept    = 0x00281052
	tagRescaleSlope        = 0x00281053
	tagVOILUTFunction      = 0x00281056
)

var attributes = map[uint32]attribute{
	tagSamplesPerPixel:     {"Samples per Pixel", "US", 0},
	tagPhotometric:         {"Photometric Interpretation", "CS", 1},
	tagRows:                {"Rows", "US", 2},
	tagColumns:             {"Columns", "US", 3},
	tagBitsAllocated:       {"Bits Allocated", "US", 4},
	tagBitsStored:          {"Bits Stored", "US", 5},
	tagHighBit:             {"High Bit", "US", 6},
	tagPixelRepresentation: {"Pixel Representation", "US", 7},
	tagNumberOfFrames:      {"Number of Frames", "IS", 8},
	tagWindowCenter:        {"Window Center", "DS", 9},
	tagWindowWidth:         {"Window Width", "DS", 10},
	tagRescaleIntercept:    {"Rescale Intercept", "DS", 11},
	tagRescaleSlope:        {"Rescale Slope", "DS", 12},
	tagVOILUTFunction:      {"VOI LUT Function", "CS", 13},
}

// required are the attributes of the Image Pixel module the reader needs,
// in the order it reports them missing.
var required = []uint32{tagSamplesPerPixel, tagPhotometric, tagRows, tagColumns,
	tagBitsAllocated, tagBitsStored, tagHighBit, tagPixelRepresentation}

// maxDeflateRatio is the most bytes one compressed byte can inflate to
// (258 bytes from a 2-bit length/distance pair); inflateSlack covers what
// the inflater and the buffer above it hold already inflated.
const (
	maxDeflateRatio = 1032
	inflateSlack    = 128 << 10
)

type element struct {
	tag    uint32
	vr     string // "" for items, delimiters and unknown implicit VR elements
	length uint32
	off    int64 // offset of the element's header
}

func (e element) String() string { return tagString(e.tag) }

type decoder struct {
	size   int64         // bytes of the file
	src    *bufio.Reader // the file
	srcOff int64         // bytes of the file read, in a deflated file

	// r is the stream of the data set: the file, or after the file meta
	// group of a deflated file, the inflated data set. off counts the bytes
	// read from it since the start of the file (inflated bytes once
	// inflated).
	r          *bufio.Reader
	off        int64
	inflated   bool
	inflateEnd int64 // off at which the inflated data set reaches MaxInflated

	explicit   bool
	headerOnly bool
	elements   int
	seen       uint32 // attribute bits
	buf        [12]byte
	val        [maxValue]byte
	img        Image
}

func decode(r io.Reader, size int64, headerOnly bool) (*Image, error) {
	if size < 0 {
		return nil, formatErr("negative size %d", size)
	}
	d := &decoder{size: size, headerOnly: headerOnly}
	d.src = bufio.NewReaderSize(io.LimitReader(r, size), 32<<10)
	d.r = d.src
	d.img.NumberOfFrames, d.img.RescaleSlope = 1, 1
	if err := d.meta(); err != nil {
		return nil, err
	}
	if err := d.dataset(); err != nil {
		return nil, err
	}
	return &d.img, nil
}

// remaining is the most bytes that can still be read from d.r: in a file,
// what is left of it; in a deflated data set, what is left of MaxInflated
// and what the rest of the file can inflate to.
func (d *decoder) remaining() int64 {
	if !d.inflated {
		return d.size - d.off
	}
	n := d.inflateEnd - d.off
	if left := d.size - d.srcOff; left < (n-inflateSlack)/maxDeflateRatio {
		n = left*maxDeflateRatio + inflateSlack
	}
	return max(n, 0)
}

func (d *decoder) readErr(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		if d.inflated {
			return formatErr("deflated data set ends at offset %d, inside an element", d.off)
		}
		return formatErr("file ends at offset %d, inside an element (truncated)", d.off)
	}
	if d.inflated {
		return formatErr("deflated data set at offset %d: %v", d.off, err)
	}
	return fmt.Errorf("dicom: reading at offset %d: %w", d.off, err)
}

func (d *decoder) readFull(p []byte) error {
	n, err := io.ReadFull(d.r, p)
	d.off += int64(n)
	if err != nil {
		return d.readErr(err)
	}
	return nil
}

func (d *decoder) skip(n int64) error {
	for n > 0 {
		m, err := d.r.Discard(int(min(n, 1<<30)))
		d.off += int64(m)
		n -= int64(m)
		if err != nil {
			return d.readErr(err)
		}
	}
	return nil
}

// checkLength refuses an element whose value is longer than what remains.
func (d *decoder) checkLength(e element) error {
	rem := d.remaining()
	if int64(e.length) <= rem {
		return nil
	}
	if d.inflated {
		return formatErr("element %s at offset %d declares %d bytes, at most %d can follow in the deflated data set", e, e.off, e.length, rem)
	}
	return formatErr("element %s declares %d bytes, %d remain", e, e.length, rem)
}

// header reads an element's header: tag, VR when explicit (items and
// delimiters have none), length.
func (d *decoder) header(explicit bool) (element, error) {
	e := element{off: d.off}
	if !d.inflated && d.remaining() < 8 {
		return e, formatErr("file ends at offset %d, inside an element header (truncated)", d.off)
	}
	if d.inflated && d.off > d.inflateEnd {
		return e, formatErr("deflated data set inflates to more than %d bytes", MaxInflated)
	}
	d.elements++
	if d.elements > MaxElements {
		return e, formatErr("more than %d elements (at offset %d)", MaxElements, d.off)
	}
	b := d.buf[:]
	if err := d.readFull(b[:4]); err != nil {
		return e, err
	}
	e.tag = uint32(binary.LittleEndian.Uint16(b))<<16 | uint32(binary.LittleEndian.Uint16(b[2:]))
	if e.tag>>16 == 0xFFFE || !explicit {
		if err := d.readFull(b[:4]); err != nil {
			return e, err
		}
		e.length = binary.LittleEndian.Uint32(b)
		if e.tag>>16 != 0xFFFE {
			e.vr = attributes[e.tag].vr
		}
		return e, nil
	}
	if err := d.readFull(b[:4]); err != nil {
		return e, err
	}
	vr, ok := vrs[string(b[:2])]
	if !ok {
		return e, formatErr("element %s at offset %d has an invalid VR %q", e, e.off, b[:2])
	}
	e.vr = vr
	if !longVRs[vr] {
		e.length = uint32(binary.LittleEndian.Uint16(b[2:]))
		return e, nil
	}
	// Two reserved bytes, then a 4-byte length.
	if err := d.readFull(b[4:8]); err != nil {
		return e, err
	}
	e.length = binary.LittleEndian.Uint32(b[4:])
	return e, nil
}

// meta checks the preamble and "DICM", and reads the file meta group
// (PS3.10 7.1), always Explicit VR Little Endian, for the transfer syntax.
func (d *decoder) meta() error {
	if d.size < 132 {
		return formatErr("not a DICOM Part 10 file: %d bytes, too short for the 128-byte preamble and \"DICM\"", d.size)
	}
	var pre [132]byte
	if err := d.readFull(pre[:]); err != nil {
		return err
	}
	if string(pre[128:]) != "DICM" {
		return FormatError("not a DICOM Part 10 file: no \"DICM\" after the 128-byte preamble")
	}
	end := int64(-1) // where the group ends, from its group length
	var prev uint32
	var ts string
	for i := 0; ; i++ {
		if end >= 0 {
			if d.off == end {
				break
			}
		} else if b, err := d.r.Peek(2); err != nil || binary.LittleEndian.Uint16(b) != 0x0002 {
			break
		}
		e, err := d.header(true)
		if err != nil {
			return err
		}
		if e.tag>>16 != 0x0002 {
			return formatErr("element %s at offset %d is inside the file meta group, which ends at offset %d", e, e.off, end)
		}
		if i > 0 && e.tag <= prev {
			return formatErr("element %s at offset %d follows %s: tags out of order", e, e.off, tagString(prev))
		}
		prev = e.tag
		if e.length == undefinedLength {
			return formatErr("file meta element %s at offset %d has an undefined length", e, e.off)
		}
		if err := d.checkLength(e); err != nil {
			return err
		}
		if end >= 0 && d.off+int64(e.length) > end {
			return formatErr("file meta element %s at offset %d overruns the group, which ends at offset %d", e, e.off, end)
		}
		switch e.tag {
		case tagGroupLength:
			if e.vr != "UL" || e.length != 4 {
				return formatErr("File Meta Information Group Length %s is %s of %d bytes, want UL of 4", e, e.vr, e.length)
			}
			if err := d.readFull(d.buf[:4]); err != nil {
				return err
			}
			n := int64(binary.LittleEndian.Uint32(d.buf[:]))
			if n > d.remaining() {
				return formatErr("file meta group declares %d bytes, %d remain", n, d.remaining())
			}
			end = d.off + n
		case tagTransferSyntax:
			if e.vr != "UI" || e.length > 64 {
				return formatErr("Transfer Syntax UID %s is %s of %d bytes, want UI of at most 64", e, e.vr, e.length)
			}
			b := d.val[:e.length]
			if err := d.readFull(b); err != nil {
				return err
			}
			ts = strings.TrimRight(string(b), "\x00 ")
		default:
			if err := d.skip(int64(e.length)); err != nil {
				return err
			}
		}
	}
	if ts == "" {
		return FormatError("no Transfer Syntax UID (0002,0010) in the file meta group")
	}
	d.img.TransferSyntax = ts
	switch ts {
	case ImplicitVRLittleEndian:
	case ExplicitVRLittleEndian, JPEGBaseline, RLELossless:
		d.explicit = true
	case DeflatedExplicitVRLittleEndian:
		// PS3.5 A.5: the rest of the file is the data set, deflated
		// (RFC 1951, no zlib header).
		d.explicit, d.inflated = true, true
		d.srcOff = d.off
		d.inflateEnd = d.off + MaxInflated
		d.r = bufio.NewReaderSize(flate.NewReader(countingReader{d.src, &d.srcOff}), 32<<10)
	default:
		return unsupported("transfer syntax %s (%s) is not supported", uidString(ts), TransferSyntaxName(ts))
	}
	return nil
}

// countingReader counts the bytes the inflater takes from the file. It is
// an io.ByteReader, so the inflater reads no more than it needs.
type countingReader struct {
	r *bufio.Reader
	n *int64
}

func (c countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	*c.n += int64(n)
	return n, err
}

func (c countingReader) ReadByte() (byte, error) {
	b, err := c.r.ReadByte()
	if err == nil {
		*c.n++
	}
	return b, err
}

// atEnd says whether the data set has ended.
func (d *decoder) atEnd() bool {
	if !d.inflated {
		return d.off >= d.size
	}
	_, err := d.r.Peek(1)
	return err == io.EOF
}

// dataset reads the top-level data set up to the pixel data.
func (d *decoder) dataset() error {
	var prev uint32
	for first := true; ; first = false {
		if d.atEnd() {
			return FormatError("no Pixel Data (7FE0,0010) in the data set")
		}
		e, err := d.header(d.explicit)
		if err != nil {
			return err
		}
		if !first && e.tag <= prev {
			return formatErr("element %s at offset %d follows %s: tags out of order", e, e.off, tagString(prev))
		}
		prev = e.tag
		switch g := e.tag >> 16; {
		case g == 0xFFFE:
			return formatErr("%s at offset %d outside a sequence", e, e.off)
		case g == 0x0002:
			return formatErr("file meta element %s at offset %d in the data set", e, e.off)
		case e.tag == tagPixelData:
			return d.pixelData(e)
		case e.tag == 0x7FE00008 || e.tag == 0x7FE00009:
			return unsupported("float pixel data %s is not supported", e)
		}
		a, keep := attributes[e.tag]
		if e.length == undefinedLength {
			if keep {
				return formatErr("%s %s at offset %d has an undefined length", a.name, e, e.off)
			}
			if err := d.undefinedValue(e, 0, d.explicit); err != nil {
				return err
			}
			continue
		}
		if err := d.checkLength(e); err != nil {
			return err
		}
		if keep {
			err = d.attribute(e, a)
		} else {
			err = d.skip(int64(e.length))
		}
		if err != nil {
			return err
		}
	}
}

// undefinedValue skips the value of an element of undefined length: a
// sequence, a UN element (which holds an Implicit VR Little Endian
// sequence, PS3.5 6.2.2), or encapsulated pixel data (an icon's).
func (d *decoder) undefinedValue(e element, depth int, explicit bool) error {
	switch {
	case explicit && e.vr == "SQ", !explicit && e.vr == "":
		return d.sequence(e, depth+1, explicit, false)
	case explicit && e.vr == "UN":
		return d.sequence(e, depth+1, false, false)
	case explicit && e.tag == tagPixelData && (e.vr == "OB" || e.vr == "OW"):
		return d.sequence(e, depth+1, explicit, true)
	}
	vr := e.vr
	if vr == "" {
		vr = "unknown"
	}
	return formatErr("element %s at offset %d of VR %s has an undefined length", e, e.off, vr)
}

// sequence skips the items of a sequence of undefined length, up to its
// delimiter; fragments says they are pixel data fragments, which must have
// a defined length.
func (d *decoder) sequence(sq element, depth int, explicit, fragments bool) error {
	if depth > MaxDepth {
		return formatErr("sequence %s at offset %d nests deeper than %d", sq, sq.off, MaxDepth)
	}
	for {
		it, err := d.header(explicit)
		if err != nil {
			return err
		}
		switch it.tag {
		case tagSeqDelim:
			if it.length != 0 {
				return formatErr("sequence delimiter at offset %d has length %d, want 0", it.off, it.length)
			}
			return nil
		case tagItem:
			if it.length == undefinedLength {
				if fragments {
					return formatErr("pixel data fragment at offset %d has an undefined length", it.off)
				}
				if err := d.item(depth, explicit); err != nil {
					return err
				}
				continue
			}
			if err := d.checkLength(it); err != nil {
				return err
			}
			if err := d.skip(int64(it.length)); err != nil {
				return err
			}
		default:
			return formatErr("element %s at offset %d in sequence %s, where an item or the sequence's end should be", it, it.off, sq)
		}
	}
}

// item skips the elements of an item of undefined length, up to its
// delimiter.
func (d *decoder) item(depth int, explicit bool) error {
	for {
		e, err := d.header(explicit)
		if err != nil {
			return err
		}
		switch {
		case e.tag == tagItemDelim:
			if e.length != 0 {
				return formatErr("item delimiter at offset %d has length %d, want 0", e.off, e.length)
			}
			return nil
		case e.tag>>16 == 0xFFFE:
			return formatErr("%s at offset %d inside an item", e, e.off)
		case e.length == undefinedLength:
			if err := d.undefinedValue(e, depth, explicit); err != nil {
				return err
			}
			continue
		}
		if err := d.checkLength(e); err != nil {
			return err
		}
		if err := d.skip(int64(e.length)); err != nil {
			return err
		}
	}
}

// attribute reads the value of an attribute the reader keeps.
func (d *decoder) attribute(e element, a attribute) error {
	if d.explicit && e.vr != a.vr && e.vr != "UN" {
		return formatErr("%s %s has VR %s, want %s", a.name, e, e.vr, a.vr)
	}
	if e.length > maxValue {
		return formatErr("%s %s of %d bytes is longer than %d", a.name, e, e.length, maxValue)
	}
	b := d.val[:e.length]
	if err := d.readFull(b); err != nil {
		return err
	}
	m := &d.img
	if a.vr == "US" {
		if len(b) != 2 {
			return formatErr("%s %s has %d bytes, want 2", a.name, e, len(b))
		}
		v := int(binary.LittleEndian.Uint16(b))
		switch e.tag {
		case tagSamplesPerPixel:
			if v != 1 {
				return unsupported("%d samples per pixel: only grey images (1) are supported", v)
			}
		case tagRows:
			m.Rows = v
		case tagColumns:
			m.Columns = v
		case tagBitsAllocated:
			m.BitsAllocated = v
		case tagBitsStored:
			m.BitsStored = v
		case tagHighBit:
			m.HighBit = v
		case tagPixelRepresentation:
			m.PixelRepresentation = v
		}
		d.seen |= 1 << a.bit
		return nil
	}
	s := string(b)
	if i := strings.IndexByte(s, '\\'); i >= 0 {
		s = s[:i] // the first value
	}
	s = strings.Trim(s, " \x00")
	if s == "" {
		if e.tag == tagPhotometric {
			return formatErr("%s %s is empty", a.name, e)
		}
		return nil // as if absent
	}
	switch a.vr {
	case "CS":
		if len(s) > 16 || strings.Trim(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_ ") != "" {
			return formatErr("%s %s is %q, not a code string", a.name, e, s)
		}
		if e.tag == tagPhotometric {
			m.PhotometricInterpretation = s
		} else {
			switch s {
			case "LINEAR", "LINEAR_EXACT", "SIGMOID":
				m.VOILUTFunction = s
			default:
				return unsupported("VOI LUT Function %q is not supported", s)
			}
		}
	case "IS":
		n, err := strconv.Atoi(s)
		if err != nil || len(s) > 12 || strings.Trim(s, "+-0123456789") != "" || n < 1 || n > math.MaxInt32 {
			return formatErr("%s %s is %q, not a positive integer string", a.name, e, s)
		}
		m.NumberOfFrames = n
	case "DS":
		v, err := strconv.ParseFloat(s, 64)
		if err != nil || strings.Trim(s, "+-.0123456789eE") != "" || math.IsInf(v, 0) || math.IsNaN(v) {
			return formatErr("%s %s is %q, not a decimal string", a.name, e, s)
		}
		switch e.tag {
		case tagWindowCenter:
			m.WindowCenter = v
		case tagWindowWidth:
			m.WindowWidth = v
		case tagRescaleIntercept:
			m.RescaleIntercept = v
		case tagRescaleSlope:
			if v == 0 {
				return formatErr("%s %s is 0", a.name, e)
			}
			m.RescaleSlope = v
		}
		const window = 1<<9 | 1<<10
		d.seen |= 1 << a.bit
		m.HasWindow = d.seen&window == window
		return nil
	}
	d.seen |= 1 << a.bit
	return nil
}
