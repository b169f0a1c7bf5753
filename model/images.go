package model

import (
	"bufio"
	"errors"
	"fmt"
	"image"
	"image/color"
	_ "image/jpeg" // formats ImageFolder reads
	_ "image/png"
	"io"
	"io/fs"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/flarego/flarego/model/dicom"
	"github.com/flarego/flarego/persistor"
	_ "golang.org/x/image/bmp"
	_ "golang.org/x/image/tiff"
	_ "golang.org/x/image/webp"
)

// RGB is an 8-bit RGB image, stored as interleaved rows.
type RGB struct {
	W, H int
	Pix  []uint8 // 3*W*H
}

// maxImageBytes bounds the memory one image takes while it is decoded:
// the decoder's own image (bytes per pixel of its color model, so a 16-bit
// RGBA PNG costs 8 per pixel) plus the RGB copy. 256 MiB holds a 16-bit
// grey 7000×7000 X-ray; a small file declaring a huge image is refused
// before anything is allocated. Image files are bounded by the same size.
const maxImageBytes = 256 << 20

// decodedBytesPerPixel is what the decoder of format holds per pixel for
// an image of color model m. A progressive JPEG also keeps a 4-byte
// coefficient per sample until its last scan.
func decodedBytesPerPixel(m color.Model, format string) int64 {
	var n int64
	switch m {
	case color.GrayModel, color.AlphaModel:
		n = 1
	case color.Gray16Model, color.Alpha16Model:
		n = 2
	case color.YCbCrModel:
		n = 3
	case color.RGBAModel, color.NRGBAModel, color.CMYKModel, color.NYCbCrAModel:
		n = 4
	case color.RGBA64Model, color.NRGBA64Model:
		n = 8
	default:
		if _, ok := m.(color.Palette); ok {
			n = 1
		} else {
			n = 8 // unknown: assume the widest
		}
	}
	if format == "jpeg" {
		n *= 5
	}
	return n
}

// LoadRGB decodes an image file and converts it to RGB as PIL's
// Image.convert("RGB") does: grey is replicated, alpha dropped, 16-bit
// samples clipped to 255 (PIL's I;16 → L conversion clips, it does not scale).
// A DICOM file (.dcm, or any file with the DICM preamble) is mapped to
// 8-bit grey first, see loadDICOM.
func LoadRGB(path string) (*RGB, error) {
	f, err := persistor.OpenRegular(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	} else if st.Size() > maxImageBytes {
		return nil, fmt.Errorf("%s: file of %d MiB is larger than an image may be (%d MiB)", path, st.Size()>>20, maxImageBytes>>20)
	}
	br := bufio.NewReader(f)
	if isDICOM(path, br) {
		return loadDICOM(f, path, st.Size())
	}
	cfg, format, err := image.DecodeConfig(br)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if cfg.Width <= 0 || cfg.Height <= 0 || cfg.Width > 1<<20 || cfg.Height > 1<<20 {
		return nil, fmt.Errorf("%s: image of %dx%d is out of range", path, cfg.Width, cfg.Height)
	}
	need := int64(cfg.Width) * int64(cfg.Height) * (decodedBytesPerPixel(cfg.ColorModel, format) + 3)
	if need > maxImageBytes {
		return nil, fmt.Errorf("%s: %dx%d %s image would take %d MiB to decode (at most %d MiB)", path, cfg.Width, cfg.Height, format, need>>20, maxImageBytes>>20)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	img, _, err := image.Decode(bufio.NewReader(f))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return toRGB(img), nil
}

// isDICOM says whether path is a DICOM file: named .dcm (in any case), or
// with "DICM" after a 128-byte preamble (DICOM Part 10).
func isDICOM(path string, br *bufio.Reader) bool {
	if strings.EqualFold(filepath.Ext(path), ".dcm") {
		return true
	}
	b, err := br.Peek(132)
	return err == nil && string(b[128:]) == "DICM"
}

// loadDICOM decodes the grey image of a DICOM file with model/dicom and
// maps it to 8 bits (dicom.Image.Gray8: rescale, the first VOI window or
// min–max, MONOCHROME1 inverted), grey replicated to RGB. It costs 8 bytes
// a pixel: the stored values (4), the 8-bit image (1), the RGB copy (3);
// the header is read first so that an image too large is refused before
// anything is allocated for it.
func loadDICOM(f *os.File, path string, size int64) (*RGB, error) {
	if _, err := f.Seek(0, io.SeekStart); err != nil { // after the sniffing
		return nil, err
	}
	cfg, err := dicom.DecodeConfig(bufio.NewReader(f), size)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if need := int64(cfg.Rows) * int64(cfg.Columns) * (4 + 1 + 3); need > maxImageBytes {
		return nil, fmt.Errorf("%s: %dx%d DICOM image would take %d MiB to decode (at most %d MiB)", path, cfg.Columns, cfg.Rows, need>>20, maxImageBytes>>20)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	img, err := dicom.Decode(bufio.NewReader(f), size)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return toRGB(img.Gray8()), nil
}

func toRGB(img image.Image) *RGB {
	b := img.Bounds()
	out := &RGB{W: b.Dx(), H: b.Dy(), Pix: make([]uint8, 3*b.Dx()*b.Dy())}
	p := out.Pix
	if m, ok := img.(*image.YCbCr); ok {
		if rgb := ycbcrToRGB(m); rgb != nil {
			return rgb
		}
	}
	switch m := img.(type) {
	case *image.Gray:
		for y := 0; y < out.H; y++ {
			row := m.Pix[y*m.Stride : y*m.Stride+out.W]
			for x, v := range row {
				i := 3 * (y*out.W + x)
				p[i], p[i+1], p[i+2] = v, v, v
			}
		}
	case *image.Gray16:
		for y := 0; y < out.H; y++ {
			for x := 0; x < out.W; x++ {
				o := y*m.Stride + 2*x
				v := uint16(m.Pix[o])<<8 | uint16(m.Pix[o+1])
				c := uint8(min(v, 255))
				i := 3 * (y*out.W + x)
				p[i], p[i+1], p[i+2] = c, c, c
			}
		}
	case *image.RGBA:
		for y := 0; y < out.H; y++ {
			for x := 0; x < out.W; x++ {
				o := y*m.Stride + 4*x
				i := 3 * (y*out.W + x)
				// PIL stores unpremultiplied RGBA; Go's decoders premultiply,
				// so undo it for partly transparent pixels.
				a := m.Pix[o+3]
				for c := 0; c < 3; c++ {
					v := m.Pix[o+c]
					if a != 0 && a != 255 {
						v = uint8(min(255, (int(v)*255+int(a)/2)/int(a)))
					}
					p[i+c] = v
				}
			}
		}
	default:
		for y := 0; y < out.H; y++ {
			for x := 0; x < out.W; x++ {
				c := color.NRGBAModel.Convert(img.At(b.Min.X+x, b.Min.Y+y)).(color.NRGBA)
				i := 3 * (y*out.W + x)
				p[i], p[i+1], p[i+2] = c.R, c.G, c.B
			}
		}
	}
	return out
}

// Resize is PIL's Image.resize with the BILINEAR filter, which is what
// torchvision's Resize does to PIL images: a separable, antialiased
// resample (the filter widens by the scale when shrinking) computed in
// 22-bit fixed point, horizontal pass first, each pass rounded to 8 bits.
func Resize(in *RGB, w, h int) *RGB {
	if in.W == w && in.H == h {
		return &RGB{W: w, H: h, Pix: append([]uint8(nil), in.Pix...)}
	}
	hb, hk, hks := resampleCoeffs(in.W, w)
	vb, vk, vks := resampleCoeffs(in.H, h)
	// Rows of the source the vertical pass will read.
	first := vb[0]
	last := vb[2*(h-1)] + vb[2*(h-1)+1]
	tmp := &RGB{W: w, H: last - first, Pix: make([]uint8, 3*w*(last-first))}
	for y := 0; y < tmp.H; y++ {
		src := in.Pix[3*(y+first)*in.W:]
		dst := tmp.Pix[3*y*w:]
		for x := 0; x < w; x++ {
			xmin, n := hb[2*x], hb[2*x+1]
			k := hk[x*hks:]
			var s0, s1, s2 int64 = 1 << 21, 1 << 21, 1 << 21
			for i := 0; i < n; i++ {
				o := 3 * (xmin + i)
				kv := int64(k[i])
				s0 += int64(src[o]) * kv
				s1 += int64(src[o+1]) * kv
				s2 += int64(src[o+2]) * kv
			}
			dst[3*x], dst[3*x+1], dst[3*x+2] = clip8(s0), clip8(s1), clip8(s2)
		}
	}
	out := &RGB{W: w, H: h, Pix: make([]uint8, 3*w*h)}
	for y := 0; y < h; y++ {
		ymin, n := vb[2*y]-first, vb[2*y+1]
		k := vk[y*vks:]
		dst := out.Pix[3*y*w:]
		for x := 0; x < 3*w; x++ {
			var s int64 = 1 << 21
			for i := 0; i < n; i++ {
				s += int64(tmp.Pix[3*(ymin+i)*w+x]) * int64(k[i])
			}
			dst[x] = clip8(s)
		}
	}
	return out
}

const precisionBits = 32 - 8 - 2

func clip8(v int64) uint8 {
	if v >= 1<<precisionBits<<8 {
		return 255
	}
	if v <= 0 {
		return 0
	}
	return uint8(v >> precisionBits)
}

// resampleCoeffs mirrors PIL's precompute_coeffs + normalize_coeffs_8bpc for
// the bilinear (triangle) filter: per output pixel the first input index, the
// number of taps, and fixed-point weights.
func resampleCoeffs(inSize, outSize int) (bounds []int, kk []int32, ksize int) {
	scale := float64(inSize) / float64(outSize)
	filterscale := max(scale, 1)
	support := 1.0 * filterscale
	ksize = int(math.Ceil(support))*2 + 1
	bounds = make([]int, 2*outSize)
	kk = make([]int32, outSize*ksize)
	w := make([]float64, ksize)
	for xx := 0; xx < outSize; xx++ {
		center := (float64(xx) + 0.5) * scale
		ss := 1 / filterscale
		xmin := max(int(center-support+0.5), 0)
		xmax := min(int(center+support+0.5), inSize) - xmin
		var ww float64
		for x := 0; x < xmax; x++ {
			t := math.Abs((float64(x+xmin) - center + 0.5) * ss)
			w[x] = 0
			if t < 1 {
				w[x] = 1 - t
			}
			ww += w[x]
		}
		for x := 0; x < xmax; x++ {
			v := w[x]
			if ww != 0 {
				v /= ww
			}
			if v < 0 {
				kk[xx*ksize+x] = int32(-0.5 + v*(1<<precisionBits))
			} else {
				kk[xx*ksize+x] = int32(0.5 + v*(1<<precisionBits))
			}
		}
		bounds[2*xx], bounds[2*xx+1] = xmin, xmax
	}
	return bounds, kk, ksize
}

// Rotate is PIL's Image.rotate(angle, resample=NEAREST, expand=False,
// fillcolor=0) — counter-clockwise degrees about the centre — which is what
// torchvision's RandomRotation does to PIL images.
func Rotate(in *RGB, degrees float64) *RGB {
	out := &RGB{W: in.W, H: in.H, Pix: make([]uint8, len(in.Pix))}
	a := -degrees * math.Pi / 180
	r15 := func(v float64) float64 { return math.Round(v*1e15) / 1e15 }
	m := [6]float64{r15(math.Cos(a)), r15(math.Sin(a)), 0, r15(-math.Sin(a)), r15(math.Cos(a)), 0}
	cx, cy := float64(in.W)/2, float64(in.H)/2
	m[2] = m[0]*-cx + m[1]*-cy + cx
	m[5] = m[3]*-cx + m[4]*-cy + cy
	// PIL takes its 16.16 fixed-point path (affine_fixed in Geometry.c)
	// whenever the corners map inside ±32768, which they always do here.
	fix := func(v float64) int64 { return int64(math.Floor(v*65536 + 0.5)) }
	a0, a1, a3, a4 := fix(m[0]), fix(m[1]), fix(m[3]), fix(m[4])
	a2 := fix(m[2] + m[0]*0.5 + m[1]*0.5)
	a5 := fix(m[5] + m[3]*0.5 + m[4]*0.5)
	for y := 0; y < out.H; y++ {
		xx, yy := a2, a5
		for x := 0; x < out.W; x++ {
			xi, yi := int(xx>>16), int(yy>>16)
			if xi >= 0 && xi < in.W && yi >= 0 && yi < in.H {
				copy(out.Pix[3*(y*out.W+x):3*(y*out.W+x)+3], in.Pix[3*(yi*in.W+xi):])
			}
			xx += a0
			yy += a3
		}
		a2 += a1
		a5 += a4
	}
	return out
}

// Mean and Std are the ImageNet statistics the seed normalises with.
var (
	Mean = [3]float32{0.485, 0.456, 0.406}
	Std  = [3]float32{0.229, 0.224, 0.225}
)

// Transform is the seed's pipeline, for an input of h×w: Resize to
// (h·8/7, w·8/7) — the seed's Resize((256,256)) for its 224×224 — →
// [RandomRotation(±20°) when rng is not nil] → CenterCrop(h, w) → ToTensor
// → Normalize. It writes the CHW tensor into dst (3·h·w floats).
func Transform(img *RGB, rng *rand.Rand, dst []float32, h, w int) {
	rh, rw := int(math.Round(float64(h)*8/7)), int(math.Round(float64(w)*8/7))
	r := Resize(img, rw, rh)
	if rng != nil {
		r = Rotate(r, rng.Float64()*40-20)
	}
	// torchvision: top = int(round((256 - 224) / 2.0))
	off := int(math.Round(float64(r.H-h) / 2))
	offx := int(math.Round(float64(r.W-w) / 2))
	for c := 0; c < 3; c++ {
		plane := dst[c*h*w : (c+1)*h*w]
		m, s := Mean[c], Std[c]
		for y := 0; y < h; y++ {
			row := r.Pix[3*((y+off)*r.W+offx):]
			for x := 0; x < w; x++ {
				plane[y*w+x] = (float32(row[3*x+c])/255 - m) / s
			}
		}
	}
}

// ImageInput returns the height and width the image pipeline makes for
// the spec, or why it cannot feed it: images become 3-channel RGB tensors.
func (s *Spec) ImageInput() (h, w int, err error) {
	if _, err := s.Shapes(); err != nil {
		return 0, 0, err
	}
	if s.Input[0] != 3 {
		return 0, 0, fmt.Errorf("model spec %q: input %v has %d channel(s), but images are fed as 3 (RGB)", s.Name, s.Input, s.Input[0])
	}
	return s.Input[1], s.Input[2], nil
}

// readDir is os.ReadDir for a path that must be a directory: it checks
// first, as opening a named pipe would block.
func readDir(path string) ([]os.DirEntry, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !st.IsDir() {
		return nil, &fs.PathError{Op: "open", Path: path, Err: syscall.ENOTDIR}
	}
	return os.ReadDir(path)
}

// Sample is one image of an ImageFolder and its class index.
type Sample struct {
	Path  string
	Class int
}

// imageExts are torchvision's IMG_EXTENSIONS, and .dcm.
//
// .dcm (DICOM, read by LoadRGB through model/dicom) is flarego's own
// addition, not torchvision's: a torchvision ImageFolder of the same
// folder does not list the .dcm files.
var imageExts = map[string]bool{".jpg": true, ".jpeg": true, ".png": true, ".ppm": true, ".bmp": true,
	".pgm": true, ".tif": true, ".tiff": true, ".webp": true,
	".dcm": true}

// ImageFolder lists root as torchvision's ImageFolder does: classes are the
// sorted sub-directory names, samples are the image files under each,
// walked in sorted order.
func ImageFolder(root string) (classes []string, samples []Sample, err error) {
	entries, err := readDir(root)
	if err != nil {
		return nil, nil, fmt.Errorf("reading image folder: %w", err)
	}
	for _, e := range entries {
		if e.IsDir() {
			classes = append(classes, e.Name())
		}
	}
	sort.Strings(classes)
	if len(classes) == 0 {
		return nil, nil, fmt.Errorf("image folder %s has no class sub-directories", root)
	}
	for ci, c := range classes {
		// os.walk order, as torchvision sorts it: directories by path, then
		// the files of each directory by name.
		byDir := map[string][]string{}
		err := filepath.WalkDir(filepath.Join(root, c), func(p string, d os.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !d.IsDir() && imageExts[strings.ToLower(filepath.Ext(p))] {
				byDir[filepath.Dir(p)] = append(byDir[filepath.Dir(p)], p)
			}
			return nil
		})
		if err != nil {
			return nil, nil, fmt.Errorf("reading image folder: %w", err)
		}
		dirs := make([]string, 0, len(byDir))
		for d := range byDir {
			dirs = append(dirs, d)
		}
		sort.Strings(dirs)
		for _, d := range dirs {
			sort.Strings(byDir[d])
			for _, f := range byDir[d] {
				samples = append(samples, Sample{Path: f, Class: ci})
			}
		}
	}
	if len(samples) == 0 {
		return classes, nil, errors.New("image folder " + root + " holds no images")
	}
	return classes, samples, nil
}
