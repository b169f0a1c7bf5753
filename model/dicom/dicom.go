// Package dicom reads the grey images of DICOM Part 10 files (PS3.10), as
// chest X-rays are stored: a strict reader of what such files use, and
// nothing else.
//
// Supported transfer syntaxes (PS3.5 §10, Annex A):
//
//	1.2.840.10008.1.2         Implicit VR Little Endian
//	1.2.840.10008.1.2.1       Explicit VR Little Endian
//	1.2.840.10008.1.2.1.99    Deflated Explicit VR Little Endian
//	1.2.840.10008.1.2.4.50    JPEG Baseline (Process 1), through image/jpeg
//	1.2.840.10008.1.2.5       RLE Lossless (PS3.5 Annex G)
//
// Any other transfer syntax (JPEG Lossless, JPEG-LS, JPEG 2000, Explicit VR
// Big Endian, ...) is refused with an [UnsupportedError] that names its UID.
// Images must have one sample per pixel, Photometric Interpretation
// MONOCHROME1 or MONOCHROME2, 8 or 16 bits allocated, High Bit one less
// than Bits Stored, and unsigned or two's complement values. Of a
// multi-frame image only the first frame is decoded: with encapsulated
// pixel data, the fragments before the Basic Offset Table's second offset,
// or without a table, the first fragment.
//
// The reader takes from the data set only the attributes of the Image
// Pixel module, Rescale Slope and Intercept, Window Center and Width and
// VOI LUT Function; it skips all else (sequences, icons, private elements,
// Modality LUT and VOI LUT sequences, which are not applied) and stops at
// the Pixel Data. Top-level elements must come in ascending tag order, as
// PS3.5 7.1 requires. Offsets in errors count bytes from the start of the
// file; in a deflated file, inflated bytes after the file meta group.
//
// Every length in the file is checked against the bytes that remain
// before anything is allocated for it; sequences, which the reader skips,
// may nest at most [MaxDepth] deep, a file may hold at most [MaxElements]
// elements, and an image at most [MaxPixels] pixels. Malformed input gives
// a [FormatError] that says what was wrong and at which tag; no input
// makes the reader panic.
package dicom

import (
	"fmt"
	"image"
	"io"
	"math"
	"strings"
)

// Limits of the reader.
const (
	// MaxPixels bounds Rows×Columns: the stored values of one frame take
	// 4 bytes a pixel in Image.Pix, so at most 256 MiB.
	MaxPixels = 1 << 26
	// MaxDepth bounds how deep sequences (and their items) may nest.
	MaxDepth = 16
	// MaxElements bounds the data elements, items and delimiters of a file,
	// those inside sequences included.
	MaxElements = 1 << 18
	// MaxInflated bounds the inflated data set of a Deflated Explicit VR
	// Little Endian file.
	MaxInflated = 1 << 28
	// maxValue bounds the attributes the reader keeps other than the pixel
	// data (UIDs, code strings, decimal strings).
	maxValue = 1024
)

// Transfer syntax UIDs the reader decodes.
const (
	ImplicitVRLittleEndian         = "1.2.840.10008.1.2"
	ExplicitVRLittleEndian         = "1.2.840.10008.1.2.1"
	DeflatedExplicitVRLittleEndian = "1.2.840.10008.1.2.1.99"
	JPEGBaseline                   = "1.2.840.10008.1.2.4.50"
	RLELossless                    = "1.2.840.10008.1.2.5"
)

// transferSyntaxNames are the names PS3.6 Annex A gives the transfer
// syntaxes, for errors.
var transferSyntaxNames = map[string]string{
	ImplicitVRLittleEndian:         "Implicit VR Little Endian",
	ExplicitVRLittleEndian:         "Explicit VR Little Endian",
	DeflatedExplicitVRLittleEndian: "Deflated Explicit VR Little Endian",
	"1.2.840.10008.1.2.2":          "Explicit VR Big Endian",
	JPEGBaseline:                   "JPEG Baseline (Process 1)",
	"1.2.840.10008.1.2.4.51":       "JPEG Extended (Process 2 & 4)",
	"1.2.840.10008.1.2.4.57":       "JPEG Lossless, Non-Hierarchical (Process 14)",
	"1.2.840.10008.1.2.4.70":       "JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 [Selection Value 1])",
	"1.2.840.10008.1.2.4.80":       "JPEG-LS Lossless",
	"1.2.840.10008.1.2.4.81":       "JPEG-LS Near-Lossless",
	"1.2.840.10008.1.2.4.90":       "JPEG 2000 Image Compression (Lossless Only)",
	"1.2.840.10008.1.2.4.91":       "JPEG 2000 Image Compression",
	"1.2.840.10008.1.2.4.92":       "JPEG 2000 Part 2 Multi-component Image Compression (Lossless Only)",
	"1.2.840.10008.1.2.4.93":       "JPEG 2000 Part 2 Multi-component Image Compression",
	"1.2.840.10008.1.2.4.94":       "JPIP Referenced",
	"1.2.840.10008.1.2.4.95":       "JPIP Referenced Deflate",
	"1.2.840.10008.1.2.4.100":      "MPEG2 Main Profile / Main Level",
	"1.2.840.10008.1.2.4.101":      "MPEG2 Main Profile / High Level",
	"1.2.840.10008.1.2.4.102":      "MPEG-4 AVC/H.264 High Profile / Level 4.1",
	"1.2.840.10008.1.2.4.103":      "MPEG-4 AVC/H.264 BD-compatible High Profile / Level 4.1",
	"1.2.840.10008.1.2.4.110":      "JPEG XL Lossless",
	"1.2.840.10008.1.2.4.111":      "JPEG XL JPEG Recompression",
	"1.2.840.10008.1.2.4.112":      "JPEG XL",
	"1.2.840.10008.1.2.4.201":      "High-Throughput JPEG 2000 Image Compression (Lossless Only)",
	"1.2.840.10008.1.2.4.202":      "High-Throughput JPEG 2000 with RPCL Options Image Compression (Lossless Only)",
	"1.2.840.10008.1.2.4.203":      "High-Throughput JPEG 2000 Image Compression",
	RLELossless:                    "RLE Lossless",
	"1.2.840.10008.1.2.6.1":        "RFC 2557 MIME encapsulation",
	"1.2.840.10008.1.2.6.2":        "XML Encoding",
}

// TransferSyntaxName returns the name of a transfer syntax UID, or
// "unknown".
func TransferSyntaxName(uid string) string {
	if n, ok := transferSyntaxNames[uid]; ok {
		return n
	}
	return "unknown"
}

// A FormatError reports that the input is not a valid DICOM Part 10 file.
type FormatError string

func (e FormatError) Error() string { return "dicom: " + string(e) }

// An UnsupportedError reports that the input is a DICOM file this reader
// does not decode: another transfer syntax, a colour image, a bit depth
// other than 8 or 16.
type UnsupportedError string

func (e UnsupportedError) Error() string { return "dicom: " + string(e) }

func formatErr(format string, a ...any) error { return FormatError(fmt.Sprintf(format, a...)) }

func unsupported(format string, a ...any) error {
	return UnsupportedError(fmt.Sprintf(format, a...))
}

// An Image is the grey image of a DICOM file: the attributes of its Image
// Pixel, Modality LUT and VOI LUT modules that the reader uses, and the
// stored values of its first frame.
type Image struct {
	TransferSyntax string // Transfer Syntax UID (0002,0010)

	Rows, Columns             int    // (0028,0010), (0028,0011)
	BitsAllocated             int    // (0028,0100): 8 or 16
	BitsStored                int    // (0028,0101)
	HighBit                   int    // (0028,0102): BitsStored-1
	PixelRepresentation       int    // (0028,0103): 0 unsigned, 1 two's complement
	PhotometricInterpretation string // (0028,0004): MONOCHROME1 or MONOCHROME2
	NumberOfFrames            int    // (0028,0008), 1 when absent

	// RescaleSlope and RescaleIntercept (0028,1053) and (0028,1052) map
	// stored values to the modality's: 1 and 0 when absent.
	RescaleSlope, RescaleIntercept float64

	// HasWindow says whether Window Center (0028,1050) and Window Width
	// (0028,1051) are both present; WindowCenter and WindowWidth are then
	// their first values. VOILUTFunction (0028,1056) is LINEAR,
	// LINEAR_EXACT or SIGMOID; empty when absent, which means LINEAR.
	HasWindow                 bool
	WindowCenter, WindowWidth float64
	VOILUTFunction            string

	// Pix holds the stored values of the first frame, Rows×Columns in
	// row-major order: the bits outside Bits Stored cleared, and
	// sign-extended when PixelRepresentation is 1 (pydicom 2's pixel_array
	// keeps those bits as stored, so the two differ only where a writer
	// left them unclean). It is nil in an Image from DecodeConfig.
	Pix []int32
}

// Decode reads a DICOM Part 10 file of size bytes from r and decodes the
// first frame of its image. Lengths in the file are checked against size,
// which must be the number of bytes r holds; Decode reads no more than
// that, and stops after the pixel data.
func Decode(r io.Reader, size int64) (*Image, error) {
	return decode(r, size, false)
}

// DecodeConfig reads the header of a DICOM Part 10 file of size bytes from
// r up to its pixel data, and checks the image as Decode would, without
// decoding it. The Image it returns has no Pix.
func DecodeConfig(r io.Reader, size int64) (*Image, error) {
	return decode(r, size, true)
}

// Gray8 maps the stored values to 8 bits, as chest X-ray pipelines do:
//
//  1. The modality LUT: y = x·RescaleSlope + RescaleIntercept, in float64.
//  2. With a window (HasWindow, and WindowWidth ≥ 1 for LINEAR, > 0
//     otherwise), the VOI function of PS3.3 C.11.2.1.2 with an output
//     range of 0..255; for LINEAR, with c and w the window's centre and
//     width:
//     y ≤ c-0.5-(w-1)/2 → 0, y > c-0.5+(w-1)/2 → 255, else
//     ((y-(c-0.5))/(w-1) + 0.5)·255.
//     LINEAR_EXACT is y ≤ c-w/2 → 0, y > c+w/2 → 255, else
//     ((y-c)/w + 0.5)·255; SIGMOID is 255/(1+exp(-4(y-c)/w)).
//     Without a usable window, min–max: (y-min)/(max-min)·255 over the
//     image's rescaled values, or 0 everywhere when they are all equal.
//  3. Rounding half up, floor(v+0.5), then clamped to 0..255.
//  4. MONOCHROME1 (where the lowest value is white) inverted: 255-v.
//
// VOI LUT and Modality LUT sequences are not applied. A RescaleSlope of 0
// (an Image not made by Decode) is taken as 1. Gray8 returns nil for an
// Image without pixels.
func (m *Image) Gray8() *image.Gray {
	n := m.Rows * m.Columns
	if n <= 0 || len(m.Pix) < n {
		return nil
	}
	g := image.NewGray(image.Rect(0, 0, m.Columns, m.Rows))
	lo, hi := m.Pix[0], m.Pix[0]
	for _, v := range m.Pix[:n] {
		lo, hi = min(lo, v), max(hi, v)
	}
	slope, icpt := m.RescaleSlope, m.RescaleIntercept
	if slope == 0 {
		slope = 1 // an Image built without one
	}
	// The explicit float64 conversions keep the compiler from fusing the
	// multiply and the add, so the result is the same on every platform.
	rescale := func(x int32) float64 { return float64(float64(x)*slope) + icpt }
	voi := m.voi()
	if voi == nil {
		ymin, ymax := rescale(lo), rescale(hi)
		if ymin > ymax {
			ymin, ymax = ymax, ymin
		}
		voi = func(y float64) float64 {
			if ymax == ymin {
				return 0
			}
			return float64((y - ymin) / (ymax - ymin) * 255)
		}
	}
	invert := m.PhotometricInterpretation == "MONOCHROME1"
	gray := func(x int32) uint8 {
		v := math.Floor(voi(rescale(x)) + 0.5)
		var b uint8
		switch {
		case v >= 255:
			b = 255
		case v > 0:
			b = uint8(v)
		}
		if invert {
			b = 255 - b
		}
		return b
	}
	if int64(hi)-int64(lo) >= 1<<16 {
		// Values beyond 16 bits: not from Decode, whose Bits Stored is at
		// most 16.
		for i, v := range m.Pix[:n] {
			g.Pix[i] = gray(v)
		}
		return g
	}
	// One entry per stored value from lo to hi: at most 65536 of them.
	lut := make([]uint8, int(hi-lo)+1)
	for i := range lut {
		lut[i] = gray(lo + int32(i))
	}
	for i, v := range m.Pix[:n] {
		g.Pix[i] = lut[v-lo]
	}
	return g
}

// voi returns the image's VOI function, or nil without a usable window.
func (m *Image) voi() func(float64) float64 {
	if !m.HasWindow {
		return nil
	}
	c, w := m.WindowCenter, m.WindowWidth
	switch m.VOILUTFunction {
	case "", "LINEAR":
		if !(w >= 1) {
			return nil
		}
		lo, hi := c-0.5-(w-1)/2, c-0.5+(w-1)/2
		return func(y float64) float64 {
			switch {
			case y <= lo:
				return 0
			case y > hi:
				return 255
			}
			return float64((float64((y-(c-0.5))/(w-1)) + 0.5) * 255)
		}
	case "LINEAR_EXACT":
		if !(w > 0) {
			return nil
		}
		lo, hi := c-w/2, c+w/2
		return func(y float64) float64 {
			switch {
			case y <= lo:
				return 0
			case y > hi:
				return 255
			}
			return float64((float64((y-c)/w) + 0.5) * 255)
		}
	case "SIGMOID":
		if !(w > 0) {
			return nil
		}
		return func(y float64) float64 { return 255 / (1 + math.Exp(-4*(y-c)/w)) }
	}
	return nil
}

// tagString formats a tag as (GGGG,EEEE).
func tagString(t uint32) string { return fmt.Sprintf("(%04X,%04X)", t>>16, t&0xFFFF) }

// uidString quotes a UID that is not made of digits and dots.
func uidString(s string) string {
	if s == "" || strings.Trim(s, "0123456789.") != "" || len(s) > 64 {
		return fmt.Sprintf("%q", s)
	}
	return s
}
