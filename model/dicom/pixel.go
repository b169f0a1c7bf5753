package dicom

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"slices"
)

// pixelData checks the image's attributes and decodes the first frame of
// the Pixel Data element e, whose header has been read.
func (d *decoder) pixelData(e element) error {
	if err := d.checkImage(); err != nil {
		return err
	}
	if d.explicit && e.vr != "OB" && e.vr != "OW" {
		return formatErr("Pixel Data %s has VR %s, want OB or OW", e, e.vr)
	}
	m := &d.img
	px := int64(m.Rows) * int64(m.Columns)
	bps := int64(m.BitsAllocated / 8)
	switch m.TransferSyntax {
	case JPEGBaseline, RLELossless:
		if e.length != undefinedLength {
			return formatErr("Pixel Data %s has a length of %d bytes, but %s data must be encapsulated (undefined length)", e, e.length, TransferSyntaxName(m.TransferSyntax))
		}
		if d.headerOnly {
			return nil
		}
		frame, err := d.firstFrame(e)
		if err != nil {
			return err
		}
		if m.TransferSyntax == RLELossless {
			return m.decodeRLE(frame)
		}
		return m.decodeJPEG(frame)
	}
	if e.length == undefinedLength {
		return formatErr("Pixel Data %s has an undefined length (encapsulated), but %s is a native transfer syntax", e, TransferSyntaxName(m.TransferSyntax))
	}
	if err := d.checkLength(e); err != nil {
		return err
	}
	if need := int64(m.NumberOfFrames) * px * bps; int64(e.length) < need {
		return formatErr("Pixel Data %s of %d bytes holds less than %d frame(s) of %d×%d×%d bytes", e, e.length, m.NumberOfFrames, m.Rows, m.Columns, bps)
	}
	if d.headerOnly {
		return nil
	}
	return d.readNative(int(px), int(bps))
}

// checkImage checks the Image Pixel attributes before the pixel data.
func (d *decoder) checkImage() error {
	for _, t := range required {
		if a := attributes[t]; d.seen&(1<<a.bit) == 0 {
			return formatErr("no %s %s before the Pixel Data", a.name, tagString(t))
		}
	}
	m := &d.img
	switch {
	case m.PhotometricInterpretation != "MONOCHROME1" && m.PhotometricInterpretation != "MONOCHROME2":
		return unsupported("Photometric Interpretation %s is not supported (only MONOCHROME1 and MONOCHROME2)", m.PhotometricInterpretation)
	case m.BitsAllocated != 8 && m.BitsAllocated != 16:
		return unsupported("%d bits allocated is not supported (only 8 and 16)", m.BitsAllocated)
	case m.BitsStored < 1 || m.BitsStored > m.BitsAllocated:
		return formatErr("Bits Stored %d with Bits Allocated %d", m.BitsStored, m.BitsAllocated)
	case m.HighBit != m.BitsStored-1:
		return unsupported("High Bit %d with Bits Stored %d is not supported (only Bits Stored-1)", m.HighBit, m.BitsStored)
	case m.PixelRepresentation > 1:
		return formatErr("Pixel Representation %d, want 0 or 1", m.PixelRepresentation)
	case m.Rows == 0 || m.Columns == 0:
		return formatErr("image of %d×%d pixels", m.Rows, m.Columns)
	case m.Rows*m.Columns > MaxPixels:
		return unsupported("image of %d×%d pixels is larger than %d pixels", m.Rows, m.Columns, MaxPixels)
	case m.TransferSyntax == JPEGBaseline && m.BitsAllocated != 8:
		return formatErr("%d bits allocated in JPEG Baseline, which is 8-bit", m.BitsAllocated)
	}
	return nil
}

// readNative reads the first frame of native pixel data: px values of bps
// bytes, little endian. In a file the frame's length has been checked
// against the file's, so the values are allocated at once; in a deflated
// data set, for what the rest of the file holds at a ratio of 8 (or 1 Mi
// values), doubled as more bytes come.
func (d *decoder) readNative(px, bps int) error {
	n := px
	if d.inflated {
		n = int(min(int64(px), max(1<<20, (d.size-d.srcOff)*8/int64(bps))))
	}
	pix := make([]int32, 0, n)
	chunk := make([]byte, min(px*bps, 64<<10))
	for left := px * bps; left > 0; {
		b := chunk[:min(left, len(chunk))]
		if err := d.readFull(b); err != nil {
			return err
		}
		left -= len(b)
		if k := len(pix) + len(b)/bps; k > cap(pix) {
			pix = slices.Grow(pix, min(px, max(k, 2*cap(pix)))-len(pix))
		}
		if bps == 1 {
			for _, v := range b {
				pix = append(pix, int32(v))
			}
		} else {
			for i := 0; i < len(b); i += 2 {
				pix = append(pix, int32(binary.LittleEndian.Uint16(b[i:])))
			}
		}
	}
	d.img.Pix = pix
	d.img.maskValues()
	return nil
}

// maskValues clears the bits above Bits Stored and sign-extends two's
// complement values.
func (m *Image) maskValues() {
	bits := uint(m.BitsStored)
	if bits >= 32 {
		return
	}
	mask := int32(1)<<bits - 1
	sign := int32(1) << (bits - 1)
	signed := m.PixelRepresentation == 1
	for i, v := range m.Pix {
		v &= mask
		if signed && v&sign != 0 {
			v -= mask + 1
		}
		m.Pix[i] = v
	}
}

// firstFrame reads encapsulated pixel data (PS3.5 A.4) up to the end of
// the first frame's fragments and returns them joined: every fragment
// when there is one frame; for more frames, those before the second
// offset of the Basic Offset Table, or without one, the first fragment.
func (d *decoder) firstFrame(e element) ([]byte, error) {
	bot, err := d.header(true)
	if err != nil {
		return nil, err
	}
	if bot.tag != tagItem || bot.length == undefinedLength || bot.length%4 != 0 {
		return nil, formatErr("Pixel Data %s: %s of length %d at offset %d, where the Basic Offset Table item should be", e, bot, bot.length, bot.off)
	}
	if err := d.checkLength(bot); err != nil {
		return nil, err
	}
	frames := int64(d.img.NumberOfFrames)
	end := int64(-1) // where the second frame's fragments start
	if bot.length > 0 {
		if int64(bot.length) != 4*frames {
			return nil, formatErr("Basic Offset Table at offset %d of %d bytes for %d frame(s), want %d", bot.off, bot.length, frames, 4*frames)
		}
		n := min(int(bot.length), 8)
		if err := d.readFull(d.buf[:n]); err != nil {
			return nil, err
		}
		if first := binary.LittleEndian.Uint32(d.buf[:]); first != 0 {
			return nil, formatErr("Basic Offset Table at offset %d starts at %d, want 0", bot.off, first)
		}
		if n == 8 {
			end = int64(binary.LittleEndian.Uint32(d.buf[4:]))
			if end == 0 {
				return nil, formatErr("Basic Offset Table at offset %d: the second frame starts at 0", bot.off)
			}
		}
		if err := d.skip(int64(bot.length) - int64(n)); err != nil {
			return nil, err
		}
	}
	var data []byte
	var pos int64 // offset from the first fragment's item tag
	for n := 0; ; n++ {
		it, err := d.header(true)
		if err != nil {
			return nil, err
		}
		switch it.tag {
		case tagSeqDelim:
			if it.length != 0 {
				return nil, formatErr("sequence delimiter at offset %d has length %d, want 0", it.off, it.length)
			}
			if n == 0 {
				return nil, formatErr("Pixel Data %s has no fragments", e)
			}
			if end > pos {
				return nil, formatErr("Basic Offset Table: the second frame starts at %d, after the fragments' %d bytes", end, pos)
			}
			return data, nil
		case tagItem:
		default:
			return nil, formatErr("element %s at offset %d in the Pixel Data, where a fragment or the end should be", it, it.off)
		}
		if it.length == undefinedLength {
			return nil, formatErr("pixel data fragment at offset %d has an undefined length", it.off)
		}
		if err := d.checkLength(it); err != nil {
			return nil, err
		}
		k := len(data)
		data = slices.Grow(data, int(it.length))[:k+int(it.length)]
		if err := d.readFull(data[k:]); err != nil {
			return nil, err
		}
		pos += 8 + int64(it.length)
		if frames > 1 {
			switch {
			case end < 0 || pos == end:
				return data, nil
			case pos > end:
				return nil, formatErr("Basic Offset Table: the second frame starts at %d, inside the fragment at offset %d", end, it.off)
			}
		}
	}
}

// decodeRLE decodes an RLE Lossless frame (PS3.5 Annex G): a 64-byte
// header of segment offsets, then one PackBits segment per byte of a
// sample, the most significant first.
func (m *Image) decodeRLE(frame []byte) error {
	px := m.Rows * m.Columns
	nseg := m.BitsAllocated / 8
	if len(frame) < 64 {
		return formatErr("RLE frame of %d bytes is shorter than its 64-byte header", len(frame))
	}
	if n := binary.LittleEndian.Uint32(frame); n != uint32(nseg) {
		return formatErr("RLE header has %d segments, want %d for %d bits allocated and 1 sample", n, nseg, m.BitsAllocated)
	}
	var offs [3]int
	for i := 0; i < nseg; i++ {
		o := binary.LittleEndian.Uint32(frame[4+4*i:])
		switch {
		case i == 0 && o != 64:
			return formatErr("RLE segment 1 starts at %d, want 64", o)
		case i > 0 && int64(o) <= int64(offs[i-1]):
			return formatErr("RLE segment %d starts at %d, before segment %d's %d", i+1, o, i, offs[i-1])
		case int64(o) >= int64(len(frame)):
			return formatErr("RLE segment %d starts at %d, past the frame's %d bytes", i+1, o, len(frame))
		}
		offs[i] = int(o)
	}
	offs[nseg] = len(frame)
	// Two bytes of a segment decode to at most 128: a segment too short
	// for the image is refused before anything is allocated for it.
	for i := 0; i < nseg; i++ {
		if n := offs[i+1] - offs[i]; int64(n)*64 < int64(px) {
			return formatErr("RLE segment %d of %d bytes cannot hold %d×%d pixels", i+1, n, m.Rows, m.Columns)
		}
	}
	plane := make([]byte, px)
	pix := make([]int32, px)
	for i := 0; i < nseg; i++ {
		if err := unpackBits(frame[offs[i]:offs[i+1]], plane); err != nil {
			return formatErr("RLE segment %d: %v", i+1, err)
		}
		shift := uint(8 * (nseg - 1 - i))
		for j, b := range plane {
			pix[j] |= int32(b) << shift
		}
	}
	m.Pix = pix
	m.maskValues()
	return nil
}

// unpackBits decodes a PackBits segment (PS3.5 G.3.2) into dst, which it
// must fill exactly; bytes after that (padding) are ignored.
func unpackBits(src, dst []byte) error {
	i, o := 0, 0
	for o < len(dst) {
		if i >= len(src) {
			return fmt.Errorf("decodes to %d bytes, want %d", o, len(dst))
		}
		n := int(int8(src[i]))
		i++
		switch {
		case n >= 0: // n+1 literal bytes
			c := n + 1
			if i+c > len(src) {
				return fmt.Errorf("the literal run at byte %d overruns the segment", i-1)
			}
			if o+c > len(dst) {
				return fmt.Errorf("decodes to more than %d bytes", len(dst))
			}
			copy(dst[o:], src[i:i+c])
			i += c
			o += c
		case n != -128: // the next byte 1-n times
			c := 1 - n
			if i >= len(src) {
				return fmt.Errorf("the replicate run at byte %d overruns the segment", i-1)
			}
			if o+c > len(dst) {
				return fmt.Errorf("decodes to more than %d bytes", len(dst))
			}
			v := src[i]
			i++
			for k := o; k < o+c; k++ {
				dst[k] = v
			}
			o += c
		}
	}
	return nil
}

// decodeJPEG decodes a JPEG Baseline frame with image/jpeg.
func (m *Image) decodeJPEG(frame []byte) error {
	sof, precision, err := jpegFrame(frame)
	if err != nil {
		return err
	}
	if sof != 0xC0 && sof != 0xC1 {
		return unsupported("JPEG process of frame marker SOF%d in a JPEG Baseline file is not supported", sof-0xC0)
	}
	if precision != 8 {
		return formatErr("JPEG frame of %d-bit precision in JPEG Baseline, which is 8-bit", precision)
	}
	// A sequential Huffman-coded block takes at least 2 bits (a DC and an
	// end-of-block code), so a frame of n bytes holds at most 4n blocks.
	if blocks := int64((m.Rows+7)/8) * int64((m.Columns+7)/8); blocks > 4*int64(len(frame)) {
		return formatErr("JPEG frame of %d bytes cannot hold %d×%d pixels", len(frame), m.Rows, m.Columns)
	}
	cfg, err := jpeg.DecodeConfig(bytes.NewReader(frame))
	if err != nil {
		return formatErr("JPEG frame: %v", err)
	}
	if cfg.Width != m.Columns || cfg.Height != m.Rows {
		return formatErr("JPEG frame is %d×%d, the header says %d×%d", cfg.Width, cfg.Height, m.Columns, m.Rows)
	}
	if cfg.ColorModel != color.GrayModel {
		return formatErr("JPEG frame has colour components, but Samples per Pixel is 1")
	}
	img, err := jpeg.Decode(bytes.NewReader(frame))
	if err != nil {
		return formatErr("JPEG frame: %v", err)
	}
	g, ok := img.(*image.Gray)
	if !ok {
		return formatErr("JPEG frame decodes to %T, want grey", img)
	}
	pix := make([]int32, 0, m.Rows*m.Columns)
	for y := 0; y < m.Rows; y++ {
		for _, v := range g.Pix[y*g.Stride : y*g.Stride+m.Columns] {
			pix = append(pix, int32(v))
		}
	}
	m.Pix = pix
	m.maskValues()
	return nil
}

// jpegFrame walks the markers of a JPEG stream up to its frame header and
// returns the SOF marker and the sample precision.
func jpegFrame(b []byte) (sof, precision byte, err error) {
	if len(b) < 4 || b[0] != 0xFF || b[1] != 0xD8 {
		return 0, 0, FormatError("JPEG frame does not start with an SOI marker")
	}
	for i := 2; ; {
		if i >= len(b) || b[i] != 0xFF {
			return 0, 0, formatErr("JPEG frame: no marker at byte %d before the frame header", i)
		}
		for i < len(b) && b[i] == 0xFF { // fill bytes
			i++
		}
		if i >= len(b) {
			break
		}
		mk := b[i]
		i++
		switch {
		case mk >= 0xC0 && mk <= 0xCF && mk != 0xC4 && mk != 0xC8 && mk != 0xCC:
			if i+3 > len(b) {
				return 0, 0, FormatError("JPEG frame header is truncated")
			}
			return mk, b[i+2], nil
		case mk == 0xD9:
			return 0, 0, FormatError("JPEG frame ends before its frame header")
		case mk == 0x01 || mk >= 0xD0 && mk <= 0xD8:
			continue // no length
		}
		if i+2 > len(b) {
			break
		}
		n := int(b[i])<<8 | int(b[i+1])
		if n < 2 {
			return 0, 0, formatErr("JPEG frame: marker segment of length %d at byte %d", n, i)
		}
		i += n
	}
	return 0, 0, FormatError("JPEG frame ends before its frame header")
}
