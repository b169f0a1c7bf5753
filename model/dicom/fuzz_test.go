package dicom

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// FuzzDecode: no input panics, every error is a FormatError or an
// UnsupportedError, DecodeConfig accepts what Decode accepts with the same
// header, and a decoded image has Rows×Columns values within Bits Stored
// and a Gray8 of its size.
func FuzzDecode(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join(fixtureDir, "*.dcm"))
	for _, p := range files {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add(multiFrame(RLELossless, "2", 2, 2, 8).encapsulated([]uint32{0, 80}, rleFrame(rleSegment([]byte{1, 2, 3, 4})), rleFrame(rleSegment([]byte{5, 6, 7, 8}))).Bytes())
	f.Add(newDCM(ImplicitVRLittleEndian).image(2, 2, 16, 12, 1, "MONOCHROME1").el(tagPixelData, "OW", le16s(1, 2, 0xFFF, 0x800)).Bytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		img, err := Decode(bytes.NewReader(data), int64(len(data)))
		cfg, cerr := DecodeConfig(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			var fe FormatError
			var ue UnsupportedError
			if !errors.As(err, &fe) && !errors.As(err, &ue) {
				t.Fatalf("%T: %v", err, err)
			}
			return
		}
		if cerr != nil {
			t.Fatalf("Decode succeeds, DecodeConfig fails: %v", cerr)
		}
		hdr := *img
		hdr.Pix = nil
		if fmt.Sprint(hdr) != fmt.Sprint(*cfg) {
			t.Fatalf("DecodeConfig %+v, Decode %+v", *cfg, hdr)
		}
		if len(img.Pix) != img.Rows*img.Columns {
			t.Fatalf("%d values for %d×%d", len(img.Pix), img.Rows, img.Columns)
		}
		lo, hi := int32(0), int32(1)<<img.BitsStored-1
		if img.PixelRepresentation == 1 {
			lo, hi = -(int32(1) << (img.BitsStored - 1)), int32(1)<<(img.BitsStored-1)-1
		}
		for _, v := range img.Pix {
			if v < lo || v > hi {
				t.Fatalf("value %d outside %d..%d", v, lo, hi)
			}
		}
		if g := img.Gray8(); g == nil || g.Rect.Dx() != img.Columns || g.Rect.Dy() != img.Rows {
			t.Fatalf("Gray8 of %d×%d: %v", img.Columns, img.Rows, g)
		}
	})
}
