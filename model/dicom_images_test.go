package model

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// dicomFixtures are testdata/dicom files of lossless transfer syntaxes and
// the PNG of the 8-bit image each must give (make.py's numpy reference).
var dicomFixtures = map[string]string{
	"m2_u12_explicit.dcm": "m2_u12.png",
	"m2_u12_rle.dcm":      "m2_u12.png",
	"m1_u16_implicit.dcm": "m1_u16.png",
	"m1_u16_deflated.dcm": "m1_u16.png",
	"m2_u8_rle.dcm":       "m2_u8.png",
	"m2_u8_explicit.dcm":  "m2_u8.png",
	"m2_s16_deflated.dcm": "m2_s16.png",
	"m2_s16_rle.dcm":      "m2_s16.png",
}

// dicomFolder lays out an ImageFolder of the DICOM fixtures and their
// PNGs, with a JPEG Baseline file, a JPEG 2000 one (refused), and one
// named .DCM; it returns the folder and, for each DICOM file there, the
// PNG that must score the same.
func dicomFolder(t *testing.T) (string, map[string]string) {
	t.Helper()
	src := filepath.Join("..", "testdata", "dicom")
	dir := t.TempDir()
	for _, c := range SyntheticClasses {
		if err := os.MkdirAll(filepath.Join(dir, c), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cp := func(from, to string) {
		data, err := os.ReadFile(filepath.Join(src, from))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, to), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	pairs := map[string]string{}
	i := 0
	for dcm, png := range dicomFixtures {
		class := SyntheticClasses[i%2]
		i++
		name := filepath.Join(class, dcm)
		if dcm == "m2_u8_rle.dcm" {
			name = filepath.Join(class, "M2_U8_RLE.DCM")
		}
		cp(dcm, name)
		ref := filepath.Join(class, strings.TrimSuffix(dcm, ".dcm")+"-ref.png")
		cp(png, ref)
		pairs[filepath.Join(dir, name)] = filepath.Join(dir, ref)
	}
	cp("m2_u8_jpeg.dcm", filepath.Join("NORMAL", "m2_u8_jpeg.dcm"))
	cp("m2_u12_j2k.dcm", filepath.Join("PNEUMONIA", "m2_u12_j2k.dcm"))
	return dir, pairs
}

// DICOM files are listed by ImageFolder (.dcm in any case), and LoadRGB
// gives the 8-bit image of make.py's numpy reference, grey in all three
// channels: the same RGB as the PNG of those pixels. A DICOM file is
// recognised by its preamble whatever its name.
func TestLoadRGBDICOM(t *testing.T) {
	dir, pairs := dicomFolder(t)
	_, samples, err := ImageFolder(dir)
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]bool{}
	for _, s := range samples {
		listed[s.Path] = true
	}
	for dcm, png := range pairs {
		if !listed[dcm] || !listed[png] {
			t.Errorf("ImageFolder lists %s: %v, %s: %v", dcm, listed[dcm], png, listed[png])
		}
		got, err := LoadRGB(dcm)
		if err != nil {
			t.Fatal(err)
		}
		want, err := LoadRGB(png)
		if err != nil {
			t.Fatal(err)
		}
		if got.W != want.W || got.H != want.H || string(got.Pix) != string(want.Pix) {
			t.Errorf("%s: %dx%d RGB differs from %s's %dx%d", filepath.Base(dcm), got.W, got.H, filepath.Base(png), want.W, want.H)
		}
	}
	// No .dcm name: found by its "DICM" preamble.
	data, err := os.ReadFile(filepath.Join("..", "testdata", "dicom", "m2_u12_rle.dcm"))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "image.bin")
	os.WriteFile(p, data, 0o600)
	if _, err := LoadRGB(p); err != nil {
		t.Errorf("DICOM without a .dcm name: %v", err)
	}
	// Errors name the file.
	j2k := filepath.Join(dir, "PNEUMONIA", "m2_u12_j2k.dcm")
	if _, err := LoadRGB(j2k); err == nil || err.Error() != j2k+": dicom: transfer syntax 1.2.840.10008.1.2.4.90 (JPEG 2000 Image Compression (Lossless Only)) is not supported" {
		t.Errorf("JPEG 2000: %v", err)
	}
	// An image that would take more than maxImageBytes is refused from its
	// header: here an RLE file whose Rows and Columns say 6000.
	big := bytes.Replace(data, []byte("\x28\x00\x10\x00US\x02\x00\x30\x00"), []byte("\x28\x00\x10\x00US\x02\x00\x70\x17"), 1)
	big = bytes.Replace(big, []byte("\x28\x00\x11\x00US\x02\x00\x40\x00"), []byte("\x28\x00\x11\x00US\x02\x00\x70\x17"), 1)
	p = filepath.Join(dir, "big.dcm")
	os.WriteFile(p, big, 0o600)
	if _, err := LoadRGB(p); err == nil || err.Error() != p+": 6000x6000 DICOM image would take 274 MiB to decode (at most 256 MiB)" {
		t.Errorf("6000×6000: %v", err)
	}
	bad := filepath.Join(dir, "NORMAL", "bad.dcm")
	os.WriteFile(bad, []byte("not DICOM"), 0o600)
	if _, err := LoadRGB(bad); err == nil || !strings.HasPrefix(err.Error(), bad+": dicom: not a DICOM Part 10 file") {
		t.Errorf("not DICOM: %v", err)
	}
}

// A folder of DICOM files trains and is scored; each DICOM file's logits
// are exactly those of the PNG of the same pixels, and a file of an
// unsupported transfer syntax is warned about and skipped, as a corrupt
// image is.
func TestDICOMFolderScoresAsPNG(t *testing.T) {
	dir, pairs := dicomFolder(t)
	_, samples, err := ImageFolder(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	wantWarn := "m2_u12_j2k.dcm: dicom: transfer syntax 1.2.840.10008.1.2.4.90 (JPEG 2000 Image Compression (Lossless Only)) is not supported"
	checkWarned := func(what string, warned []string) {
		t.Helper()
		if len(warned) != 1 || !strings.HasPrefix(warned[0], "skipping ") || !strings.HasSuffix(warned[0], wantWarn) {
			t.Errorf("%s warned %q, want one naming %q", what, warned, wantWarn)
		}
	}

	small := &Spec{Name: "Small", Input: []int{3, 28, 28}, Layers: []Layer{
		{Op: "conv2d", Name: "c", Out: 2, Kernel: 3}, {Op: "maxpool2d", Kernel: 2}, {Op: "flatten"}, {Op: "linear", Name: "fc", Out: 2}}}
	sd, _ := Init(small, 7)
	net, err := NewNet(small, sd, 2)
	if err != nil {
		t.Fatal(err)
	}
	var warned []string
	steps, err := Train(ctx, net, samples, TrainConfig{Epochs: 1, LR: 0.001, Batch: 2, Warn: func(m string) { warned = append(warned, m) }})
	if err != nil {
		t.Fatal(err)
	}
	if want := (len(samples) - 1 + 1) / 2; steps != want {
		t.Errorf("%d steps for %d readable images, want %d", steps, len(samples)-1, want)
	}
	checkWarned("Train", warned)

	// The seed's network, in evaluation mode, one image a batch.
	spec := PneumoniaSpec()
	sd, err = Init(spec, 3)
	if err != nil {
		t.Fatal(err)
	}
	if net, err = NewNet(spec, sd, 1); err != nil {
		t.Fatal(err)
	}
	warned = nil
	preds, err := Predict(ctx, net, samples, 1, func(m string) { warned = append(warned, m) })
	if err != nil {
		t.Fatal(err)
	}
	checkWarned("Predict", warned)
	if len(preds) != len(samples)-1 {
		t.Fatalf("%d predictions for %d readable images", len(preds), len(samples)-1)
	}
	logits := map[string]string{}
	for _, p := range preds {
		logits[p.Sample.Path] = fmt.Sprint(p.Logits)
	}
	for dcm, png := range pairs {
		if logits[dcm] == "" || logits[dcm] != logits[png] {
			t.Errorf("%s scores %s, %s scores %s", filepath.Base(dcm), logits[dcm], filepath.Base(png), logits[png])
		}
	}
	if logits[filepath.Join(dir, "NORMAL", "m2_u8_jpeg.dcm")] == "" {
		t.Error("the JPEG Baseline file was not scored")
	}
	warned = nil
	ev, err := Evaluate(ctx, net, samples, 1, func(m string) { warned = append(warned, m) })
	if err != nil {
		t.Fatal(err)
	}
	checkWarned("Evaluate", warned)
	if ev.Images != len(samples)-1 {
		t.Errorf("evaluated %d images, want %d", ev.Images, len(samples)-1)
	}
}
