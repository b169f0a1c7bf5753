package model

import (
	"encoding/csv"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"

	"github.com/flarego/flarego/fcp"
)

// SyntheticClasses are the class folders of the synthetic data, in
// ImageFolder order (NORMAL = 0, PNEUMONIA = 1, as in the seed's data).
var SyntheticClasses = []string{"NORMAL", "PNEUMONIA"}

// WriteSyntheticCXR writes perClass chest-X-ray-like greyscale images per
// class under dir/NORMAL and dir/PNEUMONIA (ImageFolder layout): a body,
// two dark lungs and ribs; PNEUMONIA images add bright, blurred patches of
// consolidation inside a lung. Sizes vary around 320 pixels and the files
// alternate between PNG and JPEG, as real sites' exports do. The same seed
// gives the same files. It returns the paths relative to dir.
func WriteSyntheticCXR(dir string, perClass int, seed uint64) ([]string, error) {
	rng := rand.New(rand.NewPCG(seed, 0xc0ffee))
	var rel []string
	for ci, class := range SyntheticClasses {
		if err := os.MkdirAll(filepath.Join(dir, class), 0o755); err != nil {
			return nil, err
		}
		for i := 0; i < perClass; i++ {
			img := syntheticCXR(rng, ci == 1)
			ext := ".png"
			if i%2 == 1 {
				ext = ".jpeg"
			}
			name := filepath.Join(class, fmt.Sprintf("%s-%03d%s", class, i, ext))
			f, err := os.Create(filepath.Join(dir, name))
			if err != nil {
				return nil, err
			}
			if ext == ".png" {
				err = png.Encode(f, img)
			} else {
				err = jpeg.Encode(f, img, &jpeg.Options{Quality: 92})
			}
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return nil, err
			}
			rel = append(rel, name)
		}
	}
	return rel, nil
}

func syntheticCXR(rng *rand.Rand, pneumonia bool) *image.Gray {
	w, h := 280+rng.IntN(80), 300+rng.IntN(80)
	img := image.NewGray(image.Rect(0, 0, w, h))
	cx := float64(w)/2 + rng.NormFloat64()*4
	lungDX, lungRX, lungRY := float64(w)*0.2, float64(w)*0.15, float64(h)*0.3
	lungCY := float64(h) * 0.48
	type blob struct{ x, y, r, a float64 }
	var blobs []blob
	if pneumonia {
		for k := 1 + rng.IntN(3); k > 0; k-- {
			side := 1.0
			if rng.IntN(2) == 0 {
				side = -1
			}
			blobs = append(blobs, blob{cx + side*lungDX + rng.NormFloat64()*lungRX*0.3, lungCY + rng.NormFloat64()*lungRY*0.4,
				float64(w) * (0.05 + rng.Float64()*0.06), 70 + rng.Float64()*50})
		}
	}
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			fx, fy := float64(x), float64(y)
			// Body: a bright ellipse on a dark background.
			bd := math.Pow((fx-cx)/(float64(w)*0.45), 2) + math.Pow((fy-float64(h)*0.55)/(float64(h)*0.55), 2)
			v := 20.0
			if bd < 1 {
				v = 150 - 40*bd
			}
			// Lungs: darker (air) ellipses either side of the spine.
			for _, side := range []float64{-1, 1} {
				ld := math.Pow((fx-cx-side*lungDX)/lungRX, 2) + math.Pow((fy-lungCY)/lungRY, 2)
				if ld < 1 {
					v -= 80 * (1 - ld*ld)
				}
			}
			// Ribs: faint bright arcs.
			v += 12 * math.Max(0, math.Sin(fy/9+math.Pow((fx-cx)/float64(w), 2)*8))
			for _, b := range blobs {
				d := math.Hypot(fx-b.x, fy-b.y) / b.r
				v += b.a * math.Exp(-d*d)
			}
			v += rng.NormFloat64() * 6
			img.SetGray(x, y, color.Gray{uint8(math.Max(0, math.Min(255, v)))})
		}
	}
	return img
}

// syntheticDataset is the dataset folder WriteSyntheticSite writes under
// the input root's fcp.DatasetsDir.
const syntheticDataset = "cxr"

// WriteSyntheticSite writes what an FCP container's /input holds for this
// job, in package fcp's layout: datasets/cxr/file_data (training,
// ImageFolder), file_data and dataset.csv (inference; the CSV lists the
// images in a shuffled order with their path relative to file_data, a
// patient id and the true label).
func WriteSyntheticSite(root string, perClass int, seed uint64) error {
	if _, err := WriteSyntheticCXR(filepath.Join(root, fcp.DatasetsDir, syntheticDataset, fcp.ImagesDir), perClass, seed); err != nil {
		return err
	}
	loc := fcp.Locations{Input: root}
	rel, err := WriteSyntheticCXR(loc.InferenceFolder(), perClass, seed+1000)
	if err != nil {
		return err
	}
	rng := rand.New(rand.NewPCG(seed, 7))
	rng.Shuffle(len(rel), func(i, j int) { rel[i], rel[j] = rel[j], rel[i] })
	f, err := os.Create(loc.DatasetCSV())
	if err != nil {
		return err
	}
	cw := csv.NewWriter(f)
	cw.Write([]string{"patient_id", "image_path", "label"})
	for i, p := range rel {
		label := SyntheticClasses[0]
		if filepath.Dir(p) == SyntheticClasses[1] {
			label = SyntheticClasses[1]
		}
		cw.Write([]string{fmt.Sprintf("P%04d", i+1), filepath.ToSlash(p), label})
	}
	cw.Flush()
	if err := cw.Error(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
