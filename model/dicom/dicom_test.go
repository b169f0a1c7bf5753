package dicom

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/png"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// fixtureDir holds the files testdata/dicom/make.py writes.
var fixtureDir = filepath.Join("..", "..", "testdata", "dicom")

// A manifestEntry is what make.py records of one file: the header values
// pydicom reads, and the pixels and 8-bit image it must decode to.
type manifestEntry struct {
	File                string   `json:"file"`
	TransferSyntax      string   `json:"transfer_syntax"`
	Rows                int      `json:"rows"`
	Columns             int      `json:"columns"`
	BitsAllocated       int      `json:"bits_allocated"`
	BitsStored          int      `json:"bits_stored"`
	PixelRepresentation int      `json:"pixel_representation"`
	Photometric         string   `json:"photometric"`
	RescaleSlope        *float64 `json:"rescale_slope"`
	RescaleIntercept    *float64 `json:"rescale_intercept"`
	WindowCenter        *float64 `json:"window_center"`
	WindowWidth         *float64 `json:"window_width"`
	Pixels              string   `json:"pixels"`
	Gray8               string   `json:"gray8"`
	Lossy               bool     `json:"lossy"`
	Refused             bool     `json:"refused"`
}

func readManifest(t testing.TB, dir string) []manifestEntry {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		Files []manifestEntry `json:"files"`
	}
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	if len(m.Files) == 0 {
		t.Fatalf("%s/manifest.json lists no files", dir)
	}
	return m.Files
}

var npyShape = regexp.MustCompile(`'shape': \((\d+), (\d+)\)`)
var npyDescr = regexp.MustCompile(`'descr': '([<|>][uif]\d)'`)

// readNpy reads a 2-D little-endian integer array that numpy.save wrote.
func readNpy(path string) (rows, cols int, v []int32, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, nil, err
	}
	if len(data) < 10 || string(data[:6]) != "\x93NUMPY" {
		return 0, 0, nil, fmt.Errorf("%s: not a .npy file", path)
	}
	var hlen, start int
	switch data[6] {
	case 1:
		hlen, start = int(binary.LittleEndian.Uint16(data[8:])), 10
	default:
		hlen, start = int(binary.LittleEndian.Uint32(data[8:])), 12
	}
	if start+hlen > len(data) {
		return 0, 0, nil, fmt.Errorf("%s: truncated header", path)
	}
	h := string(data[start : start+hlen])
	s, d := npyShape.FindStringSubmatch(h), npyDescr.FindStringSubmatch(h)
	if s == nil || d == nil || strings.Contains(h, "'fortran_order': True") {
		return 0, 0, nil, fmt.Errorf("%s: header %q", path, h)
	}
	rows, _ = strconv.Atoi(s[1])
	cols, _ = strconv.Atoi(s[2])
	body := data[start+hlen:]
	n := rows * cols
	switch d[1] {
	case "|u1":
		for _, b := range body[:n] {
			v = append(v, int32(b))
		}
	case "<u2":
		for i := 0; i < n; i++ {
			v = append(v, int32(binary.LittleEndian.Uint16(body[2*i:])))
		}
	case "<i2":
		for i := 0; i < n; i++ {
			v = append(v, int32(int16(binary.LittleEndian.Uint16(body[2*i:]))))
		}
	case "<i4":
		for i := 0; i < n; i++ {
			v = append(v, int32(binary.LittleEndian.Uint32(body[4*i:])))
		}
	default:
		return 0, 0, nil, fmt.Errorf("%s: dtype %s", path, d[1])
	}
	return rows, cols, v, nil
}

func readGrayPNG(path string) (*image.Gray, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		return nil, err
	}
	g, ok := img.(*image.Gray)
	if !ok {
		return nil, fmt.Errorf("%s is %T, want 8-bit grey", path, img)
	}
	return g, nil
}

func decodeFile(path string) (*Image, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Decode(bytes.NewReader(data), int64(len(data)))
}

// jpegTolerance is how far image/jpeg's IDCT may be from libjpeg's (through
// Pillow, as pydicom decodes JPEG): the two round differently.
const jpegTolerance = 2

// checkFixtures decodes every file make.py wrote into dir and compares it
// with what pydicom read: the header values, the stored pixel values
// (exactly, for lossless files), and Gray8 with make.py's numpy reference;
// refused transfer syntaxes must give an UnsupportedError naming the UID.
func checkFixtures(t *testing.T, dir string) {
	t.Helper()
	for _, e := range readManifest(t, dir) {
		t.Run(e.File, func(t *testing.T) {
			img, err := decodeFile(filepath.Join(dir, e.File))
			if e.Refused {
				want := fmt.Sprintf("dicom: transfer syntax %s (%s) is not supported", e.TransferSyntax, TransferSyntaxName(e.TransferSyntax))
				var ue UnsupportedError
				if err == nil || err.Error() != want || !errors.As(err, &ue) || TransferSyntaxName(e.TransferSyntax) == "unknown" {
					t.Fatalf("err %v, want %q", err, want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := DecodeConfig(bytes.NewReader(mustRead(t, filepath.Join(dir, e.File))), int64(len(mustRead(t, filepath.Join(dir, e.File)))))
			if err != nil {
				t.Fatalf("DecodeConfig: %v", err)
			}
			hdr := *img
			hdr.Pix = nil
			if fmt.Sprint(*cfg) != fmt.Sprint(hdr) {
				t.Errorf("DecodeConfig %+v, Decode %+v", *cfg, hdr)
			}
			opt := func(p *float64, def float64) float64 {
				if p == nil {
					return def
				}
				return *p
			}
			got := fmt.Sprintln(img.TransferSyntax, img.Rows, img.Columns, img.BitsAllocated, img.BitsStored, img.PixelRepresentation,
				img.PhotometricInterpretation, img.RescaleSlope, img.RescaleIntercept, img.HasWindow, img.WindowCenter, img.WindowWidth)
			want := fmt.Sprintln(e.TransferSyntax, e.Rows, e.Columns, e.BitsAllocated, e.BitsStored, e.PixelRepresentation,
				e.Photometric, opt(e.RescaleSlope, 1), opt(e.RescaleIntercept, 0), e.WindowCenter != nil, opt(e.WindowCenter, 0), opt(e.WindowWidth, 0))
			if got != want {
				t.Errorf("header %s, pydicom's %s", got, want)
			}
			rows, cols, pix, err := readNpy(filepath.Join(dir, e.Pixels))
			if err != nil {
				t.Fatal(err)
			}
			if rows != img.Rows || cols != img.Columns || len(img.Pix) != len(pix) {
				t.Fatalf("%d×%d, %d values; pydicom's %d×%d", img.Rows, img.Columns, len(img.Pix), rows, cols)
			}
			tol := int32(0)
			if e.Lossy {
				tol = jpegTolerance
			}
			diff, worst := 0, int32(0)
			for i := range pix {
				if d := abs(img.Pix[i] - pix[i]); d > 0 {
					diff++
					worst = max(worst, d)
				}
			}
			if worst > tol {
				t.Errorf("%d of %d pixels differ from pydicom's pixel_array, by up to %d (tolerance %d)", diff, len(pix), worst, tol)
			} else if diff > 0 {
				t.Logf("%d of %d pixels differ from pydicom's (Pillow's libjpeg), by up to %d", diff, len(pix), worst)
			}
			ref, err := readGrayPNG(filepath.Join(dir, e.Gray8))
			if err != nil {
				t.Fatal(err)
			}
			g := img.Gray8()
			if g.Bounds() != ref.Bounds() {
				t.Fatalf("Gray8 bounds %v, want %v", g.Bounds(), ref.Bounds())
			}
			diff, worst = 0, 0
			for y := 0; y < img.Rows; y++ {
				for x := 0; x < img.Columns; x++ {
					if d := abs(int32(g.GrayAt(x, y).Y) - int32(ref.GrayAt(x, y).Y)); d > 0 {
						diff++
						worst = max(worst, d)
					}
				}
			}
			// Lossy pixels that differ by a level map to 8 bits apart by
			// up to 255/(max-min) times that.
			if e.Lossy {
				tol = 2 * jpegTolerance
			}
			if worst > tol {
				t.Errorf("Gray8: %d pixels differ from make.py's, by up to %d (tolerance %d)", diff, worst, tol)
			}
		})
	}
}

func abs(v int32) int32 {
	if v < 0 {
		return -v
	}
	return v
}

func mustRead(t testing.TB, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// The committed files decode to what pydicom reads from them.
func TestFixtures(t *testing.T) { checkFixtures(t, fixtureDir) }

// A dcm builds DICOM Part 10 files for the tests: the preamble, a file
// meta group, then elements in the transfer syntax's encoding.
type dcm struct {
	bytes.Buffer
	explicit bool
}

func newDCM(ts string) *dcm {
	var meta bytes.Buffer
	d := &dcm{explicit: ts != ImplicitVRLittleEndian}
	putExplicit(&meta, 0x00020001, "OB", []byte{0, 1})
	putExplicit(&meta, 0x00020010, "UI", pad(ts, 0))
	d.Write(make([]byte, 128))
	d.WriteString("DICM")
	putExplicit(&d.Buffer, 0x00020000, "UL", binary.LittleEndian.AppendUint32(nil, uint32(meta.Len())))
	d.Write(meta.Bytes())
	return d
}

func pad(s string, with byte) []byte {
	b := []byte(s)
	if len(b)%2 == 1 {
		b = append(b, with)
	}
	return b
}

func us(v int) []byte { return binary.LittleEndian.AppendUint16(nil, uint16(v)) }

func putTag(w *bytes.Buffer, tag uint32) {
	w.Write(binary.LittleEndian.AppendUint16(nil, uint16(tag>>16)))
	w.Write(binary.LittleEndian.AppendUint16(nil, uint16(tag)))
}

// putHeader writes an element header; for items and delimiters (group
// FFFE), and in implicit VR, without a VR.
func putHeader(w *bytes.Buffer, explicit bool, tag uint32, vr string, length uint32) {
	putTag(w, tag)
	if !explicit || tag>>16 == 0xFFFE {
		w.Write(binary.LittleEndian.AppendUint32(nil, length))
		return
	}
	w.WriteString(vr)
	if longVRs[vr] {
		w.Write([]byte{0, 0})
		w.Write(binary.LittleEndian.AppendUint32(nil, length))
	} else {
		w.Write(binary.LittleEndian.AppendUint16(nil, uint16(length)))
	}
}

func putExplicit(w *bytes.Buffer, tag uint32, vr string, value []byte) {
	putHeader(w, true, tag, vr, uint32(len(value)))
	w.Write(value)
}

func (d *dcm) el(tag uint32, vr string, value []byte) *dcm {
	putHeader(&d.Buffer, d.explicit, tag, vr, uint32(len(value)))
	d.Write(value)
	return d
}

func (d *dcm) hdr(tag uint32, vr string, length uint32) *dcm {
	putHeader(&d.Buffer, d.explicit, tag, vr, length)
	return d
}

// image writes the Image Pixel attributes of a grey image.
func (d *dcm) image(rows, cols, bits, stored, signed int, photometric string) *dcm {
	return d.el(tagSamplesPerPixel, "US", us(1)).
		el(tagPhotometric, "CS", pad(photometric, ' ')).
		el(tagRows, "US", us(rows)).
		el(tagColumns, "US", us(cols)).
		el(tagBitsAllocated, "US", us(bits)).
		el(tagBitsStored, "US", us(stored)).
		el(tagHighBit, "US", us(stored-1)).
		el(tagPixelRepresentation, "US", us(signed))
}

func (d *dcm) decode() (*Image, error) {
	return Decode(bytes.NewReader(d.Bytes()), int64(d.Len()))
}

// le16s packs values as 16-bit little endian.
func le16s(v ...int) []byte {
	var b []byte
	for _, x := range v {
		b = binary.LittleEndian.AppendUint16(b, uint16(x))
	}
	return b
}

// Native pixel data: bits above Bits Stored are cleared, two's complement
// values sign-extended, odd lengths padded, and of several frames the first
// is decoded; the same in implicit VR.
func TestNativeValues(t *testing.T) {
	for _, c := range []struct {
		name         string
		ts           string
		bits, stored int
		signed       int
		frames       string
		data         []byte
		want         []int32
	}{
		{"12 of 16 bits, junk above", ExplicitVRLittleEndian, 16, 12, 0, "", le16s(0xF001, 0x0FFF, 0x1234, 0, 1, 2), []int32{1, 4095, 0x234, 0, 1, 2}},
		{"signed 12 of 16", ExplicitVRLittleEndian, 16, 12, 1, "", le16s(0x0800, 0x0FFF, 0x07FF, 0xF800, 0x0001, 0xFFFF), []int32{-2048, -1, 2047, -2048, 1, -1}},
		{"signed 16", ImplicitVRLittleEndian, 16, 16, 1, "", le16s(0x8000, 0xFFFF, 0x7FFF, 0, 1, 2), []int32{-32768, -1, 32767, 0, 1, 2}},
		{"8 bits, padded", ImplicitVRLittleEndian, 8, 8, 0, "", []byte{0, 1, 2, 253, 254, 255}, []int32{0, 1, 2, 253, 254, 255}},
		{"two frames", ExplicitVRLittleEndian, 8, 8, 0, "2 ", []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, []int32{1, 2, 3, 4, 5, 6}},
	} {
		d := newDCM(c.ts).image(2, 3, c.bits, c.stored, c.signed, "MONOCHROME2")
		if c.frames != "" {
			// (0028,0008) sorts between (0028,0004) and (0028,0010): rebuild.
			d = newDCM(c.ts).el(tagSamplesPerPixel, "US", us(1)).el(tagPhotometric, "CS", pad("MONOCHROME2", ' ')).
				el(tagNumberOfFrames, "IS", []byte(c.frames)).el(tagRows, "US", us(2)).el(tagColumns, "US", us(3)).
				el(tagBitsAllocated, "US", us(c.bits)).el(tagBitsStored, "US", us(c.stored)).el(tagHighBit, "US", us(c.stored-1)).
				el(tagPixelRepresentation, "US", us(c.signed))
		}
		img, err := d.el(tagPixelData, "OW", c.data).decode()
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if fmt.Sprint(img.Pix) != fmt.Sprint(c.want) {
			t.Errorf("%s: %v, want %v", c.name, img.Pix, c.want)
		}
	}
}

// Gray8 is the modality LUT, the first VOI window (or min–max), rounding
// half up, then MONOCHROME1 inverted: checked on values worked out by hand.
func TestGray8(t *testing.T) {
	for _, c := range []struct {
		name string
		m    Image
		pix  []int32
		want []uint8
	}{
		// c=100, w=51: up to 74.5 → 0, above 124.5 → 255, else
		// ((x-99.5)/50+0.5)·255: 75 → 2.55, 76 → 7.65, 99 → 124.95,
		// 100 → 130.05, 124 → 252.45. A zero RescaleSlope is taken as 1.
		{"linear window", Image{HasWindow: true, WindowCenter: 100, WindowWidth: 51},
			[]int32{0, 74, 75, 76, 99, 100, 124, 125, 1000}, []uint8{0, 0, 3, 8, 125, 130, 252, 255, 255}},
		// slope 2, intercept -100, then the same window: 87 → 74, 88 → 76,
		// 112 → 124, 113 → 126.
		{"rescaled", Image{RescaleSlope: 2, RescaleIntercept: -100, HasWindow: true, WindowCenter: 100, WindowWidth: 51},
			[]int32{87, 88, 100, 112, 113}, []uint8{0, 8, 130, 252, 255}},
		{"min-max", Image{RescaleSlope: 1}, []int32{-10, 0, 10, 11, 30}, []uint8{0, 64, 128, 134, 255}},
		{"min-max, negative slope", Image{RescaleSlope: -1}, []int32{-10, 0, 30}, []uint8{255, 191, 0}},
		{"constant", Image{RescaleSlope: 1}, []int32{7, 7, 7}, []uint8{0, 0, 0}},
		// 127.5 rounds to 128, then is inverted.
		{"MONOCHROME1", Image{RescaleSlope: 1, PhotometricInterpretation: "MONOCHROME1"}, []int32{0, 1, 2}, []uint8{255, 127, 0}},
		{"width below 1: min-max", Image{RescaleSlope: 1, HasWindow: true, WindowCenter: 1, WindowWidth: 0.5}, []int32{0, 2, 4}, []uint8{0, 128, 255}},
		{"width 1", Image{RescaleSlope: 1, HasWindow: true, WindowCenter: 10, WindowWidth: 1}, []int32{9, 10, 11}, []uint8{0, 255, 255}},
		// LINEAR_EXACT c=100, w=50: below 75 → 0, above 125 → 255, ((x-100)/50+0.5)·255.
		{"LINEAR_EXACT", Image{RescaleSlope: 1, HasWindow: true, WindowCenter: 100, WindowWidth: 50, VOILUTFunction: "LINEAR_EXACT"},
			[]int32{75, 76, 100, 125, 126}, []uint8{0, 5, 128, 255, 255}},
		// SIGMOID: 255/(1+exp(-4(x-c)/w)); x=c → 127.5 → 128.
		{"SIGMOID", Image{RescaleSlope: 1, HasWindow: true, WindowCenter: 0, WindowWidth: 4, VOILUTFunction: "SIGMOID"},
			[]int32{-100, -1, 0, 1, 100}, []uint8{0, 69, 128, 186, 255}},
		// Values no Decode gives (Bits Stored is at most 16): mapped
		// without a table.
		{"beyond 16 bits", Image{RescaleSlope: 1}, []int32{-1 << 31, 0, 1<<31 - 1}, []uint8{0, 128, 255}},
	} {
		m := c.m
		m.Rows, m.Columns, m.Pix = 1, len(c.pix), c.pix
		g := m.Gray8()
		if fmt.Sprint(g.Pix) != fmt.Sprint(c.want) {
			t.Errorf("%s: %v, want %v", c.name, g.Pix, c.want)
		}
	}
	if (&Image{Rows: 2, Columns: 2}).Gray8() != nil {
		t.Error("Gray8 of an image without pixels is not nil")
	}
}

// rleSegment is a PackBits segment of literal runs.
func rleSegment(b []byte) []byte {
	var out []byte
	for len(b) > 0 {
		n := min(len(b), 128)
		out = append(out, byte(n-1))
		out = append(out, b[:n]...)
		b = b[n:]
	}
	if len(out)%2 == 1 {
		out = append(out, 0)
	}
	return out
}

// rleFrame is an RLE Lossless frame of the given segments.
func rleFrame(segs ...[]byte) []byte {
	h := make([]byte, 64)
	binary.LittleEndian.PutUint32(h, uint32(len(segs)))
	off := 64
	var body []byte
	for i, s := range segs {
		binary.LittleEndian.PutUint32(h[4+4*i:], uint32(off))
		off += len(s)
		body = append(body, s...)
	}
	return append(h, body...)
}

// encapsulated writes encapsulated pixel data: the offset table, then one
// fragment per frame.
func (d *dcm) encapsulated(bot []uint32, frags ...[]byte) *dcm {
	d.hdr(tagPixelData, "OB", undefinedLength)
	var b []byte
	for _, o := range bot {
		b = binary.LittleEndian.AppendUint32(b, o)
	}
	d.hdr(tagItem, "", uint32(len(b)))
	d.Write(b)
	for _, f := range frags {
		d.hdr(tagItem, "", uint32(len(f)))
		d.Write(f)
	}
	return d.hdr(tagSeqDelim, "", 0)
}

func multiFrame(ts string, frames string, rows, cols, bits int) *dcm {
	return newDCM(ts).el(tagSamplesPerPixel, "US", us(1)).el(tagPhotometric, "CS", pad("MONOCHROME2", ' ')).
		el(tagNumberOfFrames, "IS", pad(frames, ' ')).el(tagRows, "US", us(rows)).el(tagColumns, "US", us(cols)).
		el(tagBitsAllocated, "US", us(bits)).el(tagBitsStored, "US", us(bits)).el(tagHighBit, "US", us(bits-1)).
		el(tagPixelRepresentation, "US", us(0))
}

// RLE: 16-bit values are their high then low byte planes; of several
// frames the first is decoded, found through the offset table or, without
// one, as the first fragment; replicate runs decode too.
func TestRLE(t *testing.T) {
	hi, lo := []byte{0x01, 0x02, 0xFF, 0x00}, []byte{0x10, 0x20, 0xFF, 0x01}
	f1 := rleFrame(rleSegment(hi), rleSegment(lo))
	f2 := rleFrame(rleSegment([]byte{9, 9, 9, 9}), rleSegment([]byte{9, 9, 9, 9}))
	want := "[272 544 65535 1]"
	for _, d := range []*dcm{
		multiFrame(RLELossless, "1", 2, 2, 16).encapsulated(nil, f1),
		multiFrame(RLELossless, "2", 2, 2, 16).encapsulated([]uint32{0, uint32(8 + len(f1))}, f1, f2),
		multiFrame(RLELossless, "2", 2, 2, 16).encapsulated(nil, f1, f2),
	} {
		img, err := d.decode()
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(img.Pix) != want {
			t.Errorf("%v, want %s", img.Pix, want)
		}
	}
	// 8 bits: a replicate run of 3 (header -2), then a literal.
	img, err := multiFrame(RLELossless, "1", 1, 4, 8).encapsulated(nil, rleFrame([]byte{0xFE, 7, 0, 5})).decode()
	if err != nil || fmt.Sprint(img.Pix) != "[7 7 7 5]" {
		t.Errorf("replicate run: %v, %v", img, err)
	}
}

// An offset table that does not fall between fragments, or points past
// them, is refused.
func TestEncapsulatedOffsetTable(t *testing.T) {
	f := rleFrame(rleSegment([]byte{1, 2, 3, 4}))
	for _, c := range []struct {
		bot  []uint32
		want string
	}{
		{[]uint32{0, 7}, "the second frame starts at 7, inside the fragment"},
		{[]uint32{0, 1000}, "the second frame starts at 1000, after the fragments"},
		{[]uint32{4, 8}, "starts at 4, want 0"},
		{[]uint32{0}, "of 4 bytes for 2 frame(s), want 8"},
	} {
		_, err := multiFrame(RLELossless, "2", 2, 2, 8).encapsulated(c.bot, f).decode()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("offsets %v: %v, want %q", c.bot, err, c.want)
		}
	}
}

// allocated returns the bytes f allocates.
func allocated(f func()) uint64 {
	var a, b runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&a)
	f()
	runtime.ReadMemStats(&b)
	return b.TotalAlloc - a.TotalAlloc
}

// deflated builds a Deflated Explicit VR Little Endian file whose data set
// is what body writes, and appends tail to the file.
func deflated(t testing.TB, body func(w io.Writer), tail int) []byte {
	d := newDCM(DeflatedExplicitVRLittleEndian)
	fw, err := flate.NewWriter(&d.Buffer, flate.BestCompression)
	if err != nil {
		t.Fatal(err)
	}
	body(fw)
	if err := fw.Close(); err != nil {
		t.Fatal(err)
	}
	d.Write(make([]byte, tail))
	return d.Bytes()
}

// Hostile headers are refused quickly, with an error that says what is
// wrong, and with little memory: lengths are checked against what remains
// before anything is allocated, nesting and element counts are bounded,
// and a frame's size is checked against the bytes that encode it.
func TestHostileHeaders(t *testing.T) {
	img := func(ts string, rows, cols, bits int) *dcm {
		return newDCM(ts).image(rows, cols, bits, bits, 0, "MONOCHROME2")
	}
	nested := newDCM(ExplicitVRLittleEndian)
	for i := 0; i < 1000; i++ {
		nested.hdr(0x00540220, "SQ", undefinedLength).hdr(tagItem, "", undefinedLength)
	}
	items := newDCM(ExplicitVRLittleEndian).hdr(0x00540220, "SQ", undefinedLength)
	for i := 0; i < MaxElements; i++ {
		items.hdr(tagItem, "", 0)
	}
	tinyJPEG := []byte{0xFF, 0xD8, 0xFF, 0xC0, 0, 11, 8, 0x1F, 0x40, 0x1F, 0x40, 1, 1, 0x11, 0, 0xFF, 0xD9}
	// A private element declaring n bytes, and the first value bytes of
	// them (zeros).
	zeros := func(n, value int) func(w io.Writer) {
		return func(w io.Writer) {
			var b bytes.Buffer
			putExplicit(&b, 0x00090010, "LO", pad("X", ' '))
			putHeader(&b, true, 0x00091000, "OB", uint32(n))
			w.Write(b.Bytes())
			z := make([]byte, 1<<20)
			for ; value > 0; value -= len(z) {
				w.Write(z[:min(value, len(z))])
			}
		}
	}
	small := mustRead(t, filepath.Join(fixtureDir, "m2_u8_explicit.dcm"))
	for _, c := range []struct {
		name string
		data []byte
		want string
	}{
		{"not DICOM", []byte(strings.Repeat("x", 200)), `no "DICM" after the 128-byte preamble`},
		{"short", []byte("DICM"), "too short"},
		{"huge private length", newDCM(ExplicitVRLittleEndian).hdr(0x00091010, "OB", 0xFFFFFFFE).Bytes(), "element (0009,1010) declares 4294967294 bytes, 0 remain"},
		{"huge pixel length", img(ExplicitVRLittleEndian, 2, 2, 8).hdr(tagPixelData, "OB", 0xFFFFFFFE).el(0xFFFCFFFC, "OB", make([]byte, 1200)).Bytes(),
			"dicom: element (7FE0,0010) declares 4294967294 bytes, 1212 remain"},
		{"huge meta group", func() []byte {
			d := &dcm{explicit: true}
			d.Write(make([]byte, 128))
			d.WriteString("DICM")
			putExplicit(&d.Buffer, tagGroupLength, "UL", []byte{0xFF, 0xFF, 0xFF, 0x7F})
			return d.Bytes()
		}(), "file meta group declares 2147483647 bytes, 0 remain"},
		{"deep nesting", nested.Bytes(), "nests deeper than 16"},
		{"too many elements", items.Bytes(), "more than 262144 elements"},
		{"huge image", img(ExplicitVRLittleEndian, 65535, 65535, 16).el(tagPixelData, "OW", nil).Bytes(), "image of 65535×65535 pixels is larger than 67108864 pixels"},
		{"image larger than its pixel data", img(ExplicitVRLittleEndian, 8000, 8000, 16).el(tagPixelData, "OW", make([]byte, 100)).Bytes(),
			"Pixel Data (7FE0,0010) of 100 bytes holds less than 1 frame(s) of 8000×8000×2 bytes"},
		{"frames beyond the pixel data", multiFrame(ExplicitVRLittleEndian, "1000000", 100, 100, 8).el(tagPixelData, "OB", make([]byte, 10000)).Bytes(),
			"holds less than 1000000 frame(s)"},
		{"RLE image larger than its segment", img(RLELossless, 8000, 8000, 8).encapsulated(nil, rleFrame([]byte{0x81, 0})).Bytes(),
			"RLE segment 1 of 2 bytes cannot hold 8000×8000 pixels"},
		{"RLE segment past the frame", img(RLELossless, 2, 2, 8).encapsulated(nil, func() []byte {
			f := rleFrame(rleSegment([]byte{1, 2, 3, 4}))
			binary.LittleEndian.PutUint32(f[4:], 64000)
			return f
		}()).Bytes(), "RLE segment 1 starts at 64000, want 64"},
		{"RLE segments out of order", img(RLELossless, 2, 2, 16).encapsulated(nil, func() []byte {
			f := rleFrame(rleSegment([]byte{1, 2, 3, 4}), rleSegment([]byte{1, 2, 3, 4}))
			binary.LittleEndian.PutUint32(f[8:], 60)
			return f
		}()).Bytes(), "RLE segment 2 starts at 60, before segment 1's 64"},
		{"RLE second segment past the frame", img(RLELossless, 2, 2, 16).encapsulated(nil, func() []byte {
			f := rleFrame(rleSegment([]byte{1, 2, 3, 4}), rleSegment([]byte{1, 2, 3, 4}))
			binary.LittleEndian.PutUint32(f[8:], 0xFFFFFFF0)
			return f
		}()).Bytes(), "RLE segment 2 starts at 4294967280, past the frame's 76 bytes"},
		{"RLE segment count", img(RLELossless, 2, 2, 16).encapsulated(nil, rleFrame(rleSegment([]byte{1, 2, 3, 4}))).Bytes(), "RLE header has 1 segments, want 2"},
		{"RLE run past the image", img(RLELossless, 2, 2, 8).encapsulated(nil, rleFrame([]byte{0x80 + 1, 5, 0x80 + 1, 5})).Bytes(), "decodes to more than 4 bytes"},
		{"RLE segment short", img(RLELossless, 2, 2, 8).encapsulated(nil, rleFrame([]byte{0, 5})).Bytes(), "decodes to 1 bytes, want 4"},
		{"JPEG image larger than its data", img(JPEGBaseline, 8000, 8000, 8).encapsulated(nil, tinyJPEG).Bytes(), "JPEG frame of 17 bytes cannot hold 8000×8000 pixels"},
		{"deflated length beyond the file", deflated(t, zeros(1<<30, 1<<20), 0), "declares 1073741824 bytes, at most"},
		{"deflated length beyond MaxInflated", deflated(t, zeros(300<<20, 0), 1<<20), "at most 268435"},
		{"deflate bomb", deflated(t, zeros(64<<20, 64<<20), 0), "no Pixel Data (7FE0,0010) in the data set"},
		// 8000×8000×2 bytes declared, which 128 KiB of junk after the deflate
		// stream could inflate to; 1 MiB of them come.
		{"deflated image cut short", deflated(t, func(w io.Writer) {
			d := img(ExplicitVRLittleEndian, 8000, 8000, 16)
			d.hdr(tagPixelData, "OW", 8000*8000*2)
			d.Write(make([]byte, 1<<20))
			w.Write(d.Bytes()[len(newDCM(ExplicitVRLittleEndian).Bytes()):])
		}, 128<<10), "deflated data set ends at offset"},
		{"truncated", small[:len(small)-10], "element (7FE0,0010) declares 2790 bytes, 2780 remain"},
		{"truncated header", small[:475], "file ends at offset 470, inside an element header (truncated)"},
		{"tags out of order", newDCM(ExplicitVRLittleEndian).el(tagRows, "US", us(1)).el(tagPhotometric, "CS", pad("MONOCHROME2", ' ')).Bytes(),
			"element (0028,0004) at offset 196 follows (0028,0010): tags out of order"},
		{"undefined length string", newDCM(ExplicitVRLittleEndian).hdr(0x00100010, "UT", undefinedLength).Bytes(), "of VR UT has an undefined length"},
		{"no rows", newDCM(ExplicitVRLittleEndian).el(tagSamplesPerPixel, "US", us(1)).el(tagPixelData, "OB", nil).Bytes(), "no Photometric Interpretation (0028,0004) before the Pixel Data"},
		{"colour", newDCM(ExplicitVRLittleEndian).el(tagSamplesPerPixel, "US", us(3)).Bytes(), "3 samples per pixel: only grey images (1) are supported"},
		{"RGB", img(ExplicitVRLittleEndian, 1, 1, 8).Bytes()[:0], "too short"},
		{"wrong VR", newDCM(ExplicitVRLittleEndian).el(tagRows, "SS", us(1)).Bytes(), "Rows (0028,0010) has VR SS, want US"},
		{"invalid VR", newDCM(ExplicitVRLittleEndian).el(tagRows, "zz", us(1)).Bytes(), `invalid VR "zz"`},
		{"unknown syntax", newDCM("1.2.3.4").Bytes(), "transfer syntax 1.2.3.4 (unknown) is not supported"},
		{"big endian", newDCM("1.2.840.10008.1.2.2").Bytes(), "transfer syntax 1.2.840.10008.1.2.2 (Explicit VR Big Endian) is not supported"},
		{"JPEG lossless", newDCM("1.2.840.10008.1.2.4.57").Bytes(), "(JPEG Lossless, Non-Hierarchical (Process 14)) is not supported"},
		{"native data encapsulated", img(ExplicitVRLittleEndian, 1, 1, 8).encapsulated(nil, []byte{1, 0}).Bytes(), "has an undefined length (encapsulated), but Explicit VR Little Endian is a native"},
		{"encapsulated data native", img(RLELossless, 1, 1, 8).el(tagPixelData, "OB", []byte{1, 0}).Bytes(), "must be encapsulated"},
		{"16-bit JPEG Baseline", img(JPEGBaseline, 1, 1, 16).encapsulated(nil, tinyJPEG).Bytes(), "16 bits allocated in JPEG Baseline"},
		{"32 bits", img(ExplicitVRLittleEndian, 1, 1, 32).el(tagPixelData, "OB", make([]byte, 4)).Bytes(), "32 bits allocated is not supported"},
		{"colour photometric", newDCM(ExplicitVRLittleEndian).image(1, 1, 8, 8, 0, "RGB").el(tagPixelData, "OB", []byte{0, 0}).Bytes(), "Photometric Interpretation RGB is not supported"},
		{"window not a number", img(ExplicitVRLittleEndian, 1, 1, 8).el(tagWindowCenter, "DS", []byte("NaN ")).Bytes(), `Window Center (0028,1050) is "NaN", not a decimal string`},
		{"slope 0", img(ExplicitVRLittleEndian, 1, 1, 8).el(tagRescaleSlope, "DS", []byte("0 ")).Bytes(), "Rescale Slope (0028,1053) is 0"},
		{"long value", img(ExplicitVRLittleEndian, 1, 1, 8).el(tagWindowCenter, "DS", make([]byte, 2000)).Bytes(), "Window Center (0028,1050) of 2000 bytes is longer than 1024"},
		{"no pixel data", img(ExplicitVRLittleEndian, 1, 1, 8).Bytes(), "no Pixel Data"},
		{"item outside a sequence", img(ExplicitVRLittleEndian, 1, 1, 8).hdr(tagItem, "", 0).Bytes(), "(FFFE,E000) at offset 276 outside a sequence"},
	} {
		var err error
		start := time.Now()
		n := allocated(func() { _, err = Decode(bytes.NewReader(c.data), int64(len(c.data))) })
		took := time.Since(start)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err %v, want %q", c.name, err, c.want)
		}
		var fe FormatError
		var ue UnsupportedError
		if err != nil && !errors.As(err, &fe) && !errors.As(err, &ue) {
			t.Errorf("%s: %T is neither a FormatError nor an UnsupportedError", c.name, err)
		}
		if n > 16<<20 {
			t.Errorf("%s: allocated %d MiB", c.name, n>>20)
		}
		if took > 5*time.Second {
			t.Errorf("%s: took %v", c.name, took)
		}
		t.Logf("%s: %v, %d KiB allocated, %v", c.name, err, n>>10, took.Round(time.Millisecond))
	}
}

// A truncated file is an error, never a panic nor a partial image. (A
// deflated file may lose the last bits of its deflate stream, after the
// last pixel, and still decode whole: the reader stops at the last pixel.)
func TestTruncated(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(fixtureDir, "*.dcm"))
	if len(files) == 0 {
		t.Fatal("no fixtures")
	}
	for _, f := range files {
		data := mustRead(t, f)
		whole, werr := Decode(bytes.NewReader(data), int64(len(data)))
		for n := 0; n < len(data); n += 1 + n/64 {
			img, err := Decode(bytes.NewReader(data[:n]), int64(n))
			if err != nil {
				continue
			}
			if werr != nil || !strings.Contains(f, "deflated") || len(data)-n > 16 || fmt.Sprint(img.Pix) != fmt.Sprint(whole.Pix) {
				t.Errorf("%s cut to %d of %d bytes: decoded %d×%d", filepath.Base(f), n, len(data), img.Rows, img.Columns)
			}
		}
	}
}

// The first of several window values is kept, the VOI LUT Function read,
// an empty window value taken as absent, and an unknown function refused.
func TestWindowAttributes(t *testing.T) {
	base := func() *dcm { return newDCM(ExplicitVRLittleEndian).image(1, 2, 8, 8, 0, "MONOCHROME2") }
	img, err := base().el(tagWindowCenter, "DS", pad(`40\60`, ' ')).el(tagWindowWidth, "DS", pad(`+2.5E1\9`, ' ')).
		el(tagRescaleIntercept, "DS", pad("-3", ' ')).el(tagRescaleSlope, "DS", pad("0.5", ' ')).
		el(tagVOILUTFunction, "CS", pad("SIGMOID", ' ')).el(tagPixelData, "OB", []byte{1, 2}).decode()
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprintf("%v %v %v %v %v %s", img.HasWindow, img.WindowCenter, img.WindowWidth, img.RescaleIntercept, img.RescaleSlope, img.VOILUTFunction); got != "true 40 25 -3 0.5 SIGMOID" {
		t.Errorf("got %s", got)
	}
	img, err = base().el(tagWindowCenter, "DS", nil).el(tagWindowWidth, "DS", pad("10", ' ')).el(tagPixelData, "OB", []byte{1, 2}).decode()
	if err != nil || img.HasWindow {
		t.Errorf("empty Window Center: %v, window %v", err, img)
	}
	_, err = base().el(tagVOILUTFunction, "CS", pad("GAMMA", ' ')).el(tagPixelData, "OB", []byte{1, 2}).decode()
	var ue UnsupportedError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), `VOI LUT Function "GAMMA" is not supported`) {
		t.Errorf("unknown VOI LUT Function: %v", err)
	}
}
