//go:build interop

package model

import (
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/image/bmp"

	peertool "github.com/flarego/flarego/internal/peer"
	"github.com/flarego/flarego/persistor"
)

// writeTestImages makes images of the kinds a CXR site has: 8- and 16-bit
// greyscale, RGB, RGBA, lossless and JPEG, none of them 256×256.
func writeTestImages(t *testing.T, dir string) []string {
	rng := rand.New(rand.NewPCG(5, 5))
	w, h := 301, 417
	gray := image.NewGray(image.Rect(0, 0, w, h))
	gray16 := image.NewGray16(image.Rect(0, 0, w, h))
	rgba := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			v := uint8((x*3+y*2)%256) ^ uint8(rng.IntN(32))
			gray.SetGray(x, y, color.Gray{v})
			gray16.SetGray16(x, y, color.Gray16{uint16(v) * 3})
			rgba.SetNRGBA(x, y, color.NRGBA{v, uint8(x), uint8(y), 255})
		}
	}
	var paths []string
	save := func(name string, enc func(f *os.File) error) {
		p := filepath.Join(dir, name)
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := enc(f); err != nil {
			t.Fatal(err)
		}
		f.Close()
		paths = append(paths, p)
	}
	save("gray.png", func(f *os.File) error { return png.Encode(f, gray) })
	save("gray16.png", func(f *os.File) error { return png.Encode(f, gray16) })
	save("rgb.png", func(f *os.File) error { return png.Encode(f, rgba) })
	save("gray.bmp", func(f *os.File) error { return bmp.Encode(f, gray) })
	save("gray.jpg", func(f *os.File) error { return jpeg.Encode(f, gray, &jpeg.Options{Quality: 90}) })
	save("rgb.jpg", func(f *os.File) error { return jpeg.Encode(f, rgba, &jpeg.Options{Quality: 90}) })
	return paths
}

func TestInteropTransformsMatchTorchvision(t *testing.T) {
	peertool.EachTorch(t, transformsMatchTorchvision)
}

func transformsMatchTorchvision(t *testing.T, py peertool.Torch) {
	dir := t.TempDir()
	paths := writeTestImages(t, dir)
	out := filepath.Join(dir, "tv.pt")
	py.Run(t, append([]string{"transform", out}, paths...)...)
	tv := loadPT(t, out)
	for i, p := range paths {
		name := filepath.Base(p)
		img, err := LoadRGB(p)
		if err != nil {
			t.Fatal(err)
		}
		get := func(key string) *persistor.Tensor {
			v, ok := tv.Get(key + string(rune('0'+i)))
			if !ok {
				t.Fatalf("torchvision output lacks %s%d", key, i)
			}
			return v.(*persistor.Tensor)
		}
		maxU8 := func(a []uint8, b *persistor.Tensor) int {
			m := 0
			for j := range a {
				d := int(a[j]) - int(b.Data[j])
				m = max(m, d, -d)
			}
			return m
		}
		dRGB := maxU8(img.Pix, get("rgb"))
		dResize := maxU8(Resize(img, 256, 256).Pix, get("resized"))
		if d := maxU8(Rotate(Resize(img, 256, 256), 17.5).Pix, get("rotated")); d != 0 && filepath.Ext(name) != ".jpg" {
			t.Errorf("%s: rotation differs from PIL's by %d/255", name, d)
		}
		x := make([]float32, 3*224*224)
		Transform(img, nil, x, 224, 224)
		want := floatsOf(t, get("tensor"))
		// Compare on ToTensor's 0..1 scale (undo Normalize).
		var dT float64
		for c := 0; c < 3; c++ {
			for j := 0; j < 224*224; j++ {
				k := c*224*224 + j
				dT = math.Max(dT, math.Abs(float64((x[k]-want[k])*Std[c])))
			}
		}
		t.Logf("%-10s decode max |Δ| %d/255, PIL resize max |Δ| %d/255, tensor max |Δ| %.2f/255", name, dRGB, dResize, dT*255)
		lossless := filepath.Ext(name) != ".jpg"
		if lossless && (dRGB != 0 || dResize != 0) {
			t.Errorf("%s: lossless image differs from PIL (decode %d, resize %d)", name, dRGB, dResize)
		}
		if dT*255 > 2.001 {
			t.Errorf("%s: tensor differs from torchvision's by %.2f/255 (> 2/255)", name, dT*255)
		}
	}
}
