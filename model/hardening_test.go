package model

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"image"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Specs whose shape chain does not fit used to validate and then panic in
// the layers (Go's division truncates (3-4)/4 to 0, so an oversized kernel
// looked like a 1×1 output). Each is refused at load, naming the layer.
func TestSpecShapeChainMismatchRefused(t *testing.T) {
	for _, c := range []struct{ name, json, want string }{
		{"maxpool kernel larger than input", `{"input":[3,3,3],"layers":[{"op":"maxpool2d","kernel":4},{"op":"flatten"},{"op":"linear","name":"fc","out":2}]}`,
			`layer 0 (maxpool2d): kernel 4 larger than its 3x3 input`},
		{"conv kernel larger than input, strided", `{"input":[3,3,3],"layers":[{"op":"conv2d","name":"c","out":2,"kernel":4,"stride":2},{"op":"flatten"},{"op":"linear","name":"fc","out":2}]}`,
			`layer 0 (conv2d "c"): kernel 4 larger than its 3x3 input`},
		{"maxpool after shrinking conv", `{"input":[3,8,8],"layers":[{"op":"conv2d","name":"c","out":2,"kernel":7},{"op":"maxpool2d","kernel":3},{"op":"flatten"},{"op":"linear","name":"fc","out":2}]}`,
			`layer 1 (maxpool2d): kernel 3 larger than its 2x2 input`},
		{"negative maxpool stride", `{"input":[3,8,8],"layers":[{"op":"maxpool2d","kernel":2,"stride":-1},{"op":"flatten"},{"op":"linear","name":"fc","out":2}]}`,
			`layer 0 (maxpool2d): needs a kernel`},
		{"padding on maxpool", `{"input":[3,8,8],"layers":[{"op":"maxpool2d","kernel":2,"padding":1},{"op":"flatten"},{"op":"linear","name":"fc","out":2}]}`,
			`padding does not apply to maxpool2d`},
		{"out on relu", `{"input":[3,8,8],"layers":[{"op":"relu","out":3},{"op":"flatten"},{"op":"linear","name":"fc","out":2}]}`,
			`out does not apply to relu`},
		{"negative eps", `{"input":[3,8,8],"layers":[{"op":"batchnorm2d","name":"bn","eps":-1},{"op":"flatten"},{"op":"linear","name":"fc","out":2}]}`,
			`eps must be in`},
		{"huge linear", `{"input":[3,8,8],"layers":[{"op":"flatten"},{"op":"linear","name":"fc","out":16000000}]}`,
			`weights (at most`},
		{"huge conv", `{"input":[3,1024,1024],"layers":[{"op":"conv2d","name":"c","out":16000000,"kernel":1},{"op":"flatten"},{"op":"linear","name":"fc","out":2}]}`,
			`more than 268435456 values`},
		{"huge input", `{"input":[65536,65536,65536],"layers":[{"op":"flatten"}]}`, `has more than`},
		{"ends unflattened", `{"input":[3,8,8],"layers":[{"op":"relu"}]}`, `end with flatten and linear`},
		{"newline in the name", `{"name":"a\nb","input":[3,8,8],"layers":[{"op":"flatten"},{"op":"linear","name":"fc","out":2}]}`, `must be at most 128 printable`},
		{"newline in a layer name", `{"input":[3,8,8],"layers":[{"op":"flatten"},{"op":"linear","name":"f\nc","out":2}]}`, `needs a name without dots or spaces`},
		{"too many layers", `{"input":[3,8,8],"layers":[` + strings.Repeat(`{"op":"relu"},`, 1100) + `{"op":"flatten"}]}`, `1101 layers`},
	} {
		_, err := ParseSpec([]byte(c.json))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err %v, want %q", c.name, err, c.want)
		}
	}
}

// A spec with an input other than the seed's 224×224 is fed images of its
// own size (the images used to be cut to 224×224 whatever the spec said,
// writing past the net's input buffer); one with other than 3 channels is
// refused with the spec's name.
func TestImagePipelineUsesSpecInput(t *testing.T) {
	dir := t.TempDir()
	if _, err := WriteSyntheticCXR(dir, 2, 1); err != nil {
		t.Fatal(err)
	}
	_, samples, err := ImageFolder(dir)
	if err != nil {
		t.Fatal(err)
	}
	small := &Spec{Name: "Small", Input: []int{3, 28, 28}, Layers: []Layer{
		{Op: "conv2d", Name: "c", Out: 2, Kernel: 3}, {Op: "maxpool2d", Kernel: 2}, {Op: "flatten"}, {Op: "linear", Name: "fc", Out: 2}}}
	sd, _ := Init(small, 1)
	net, err := NewNet(small, sd, 2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Train(context.Background(), net, samples, TrainConfig{Epochs: 1, LR: 0.001, Batch: 2}); err != nil {
		t.Fatal(err)
	}
	preds, err := Predict(context.Background(), net, samples, 2, nil)
	if err != nil || len(preds) != len(samples) {
		t.Fatalf("predict: %d predictions, %v", len(preds), err)
	}

	grey := &Spec{Name: "Grey", Input: []int{1, 28, 28}, Layers: []Layer{{Op: "flatten"}, {Op: "linear", Name: "fc", Out: 2}}}
	sd, _ = Init(grey, 1)
	net, err = NewNet(grey, sd, 2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Train(context.Background(), net, samples, TrainConfig{Epochs: 1, LR: 0.001, Batch: 2}); err == nil || !strings.Contains(err.Error(), `model spec "Grey": input [1 28 28] has 1 channel(s), but images are fed as 3`) {
		t.Fatalf("train: %v", err)
	}
	if _, err := Predict(context.Background(), net, samples, 2, nil); err == nil {
		t.Fatal("predict accepted a 1-channel spec")
	}
	b, _ := grey.Marshal()
	p := filepath.Join(dir, "grey.json")
	os.WriteFile(p, b, 0o600)
	if _, err := LoadSpec(p, nil); err == nil || !strings.Contains(err.Error(), "grey.json: model spec \"Grey\"") {
		t.Fatalf("LoadSpec: %v", err)
	}
}

// Hyper-parameters that can only give NaN weights are refused before any
// work; weights that diverged anyway are reported.
func TestTrainRefusesBadHyperParameters(t *testing.T) {
	for _, c := range []TrainConfig{
		{Epochs: 1, LR: float64(nanf()), Batch: 1}, {Epochs: 1, LR: float64(inff()), Batch: 1}, {Epochs: 1, LR: 0, Batch: 1}, {Epochs: 1, LR: -1, Batch: 1},
		{Epochs: 0, LR: 0.1, Batch: 1}, {Epochs: -3, LR: 0.1, Batch: 1}, {Epochs: 1, LR: 0.1, Batch: 0}, {Epochs: 1, LR: 0.1, Batch: 5000},
	} {
		if err := c.Check(); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
	if err := (TrainConfig{Epochs: 1, LR: 0.01, Batch: 4}).Check(); err != nil {
		t.Fatal(err)
	}
	spec := &Spec{Name: "t", Input: []int{3, 4, 4}, Layers: []Layer{{Op: "flatten"}, {Op: "linear", Name: "fc", Out: 2}}}
	sd, _ := Init(spec, 1)
	net, _ := NewNet(spec, sd, 1)
	if err := net.CheckFinite(); err != nil {
		t.Fatal(err)
	}
	net.Params()[0].W[3] = nanf()
	if err := net.CheckFinite(); err == nil || !strings.Contains(err.Error(), "fc.weight holds NaN") {
		t.Fatalf("CheckFinite: %v", err)
	}
}

func nanf() float32 { var z float32; return z / z }
func inff() float32 { var z float32; return 1 / z }

// A batch size whose buffers would exceed the bound fails with a message
// instead of the machine running out of memory.
func TestNewNetBufferBoundRefused(t *testing.T) {
	sd, _ := Init(PneumoniaSpec(), 1)
	if _, err := NewNet(PneumoniaSpec(), sd, 4096); err == nil || !strings.Contains(err.Error(), "use a smaller batch") {
		t.Fatalf("err %v", err)
	}
	if n := bufferBytes(PneumoniaSpec(), mustShapes(t, PneumoniaSpec()), 4); n > 1<<30 {
		t.Fatalf("pneumonia batch 4 estimated at %d bytes", n)
	}
}

func mustShapes(t *testing.T, s *Spec) [][]int {
	sh, err := s.Shapes()
	if err != nil {
		t.Fatal(err)
	}
	return sh
}

// A named pipe among the images used to block the open forever (and with
// it SIGTERM handling); it is refused at once, and training skips it.
func TestLoadRGBRefusesNamedPipe(t *testing.T) {
	dir := t.TempDir()
	if _, err := WriteSyntheticCXR(dir, 2, 1); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "NORMAL", "fifo.png")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Skip("no named pipes here:", err)
	}
	done := make(chan error, 1)
	go func() { _, err := LoadRGB(fifo); done <- err }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "fifo.png is not a regular file (a named pipe)") {
			t.Fatalf("err %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("LoadRGB blocked on a named pipe")
	}
	_, samples, err := ImageFolder(dir)
	if err != nil {
		t.Fatal(err)
	}
	spec := &Spec{Name: "t", Input: []int{3, 8, 8}, Layers: []Layer{{Op: "flatten"}, {Op: "linear", Name: "fc", Out: 2}}}
	sd, _ := Init(spec, 1)
	net, _ := NewNet(spec, sd, 2)
	var warned []string
	if _, err := Train(context.Background(), net, samples, TrainConfig{Epochs: 1, LR: 0.01, Batch: 2, Warn: func(s string) { warned = append(warned, s) }}); err != nil {
		t.Fatal(err)
	}
	if len(warned) != 1 || !strings.Contains(warned[0], "named pipe") {
		t.Fatalf("warnings %q", warned)
	}
	// A named pipe where the image folder should be.
	pipeRoot := filepath.Join(t.TempDir(), "file_data")
	syscall.Mkfifo(pipeRoot, 0o600)
	if _, _, err := ImageFolder(pipeRoot); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("ImageFolder on a pipe: %v", err)
	}
}

// pngHeader is a PNG that declares w×h pixels of the given depth and color
// type and holds no pixel data: DecodeConfig reads it, Decode would
// allocate for the declared size.
func pngHeader(w, h uint32, depth, colorType byte) []byte {
	var b bytes.Buffer
	b.WriteString("\x89PNG\r\n\x1a\n")
	chunk := func(typ string, data []byte) {
		binary.Write(&b, binary.BigEndian, uint32(len(data)))
		crc := crc32.NewIEEE()
		crc.Write([]byte(typ))
		crc.Write(data)
		b.WriteString(typ)
		b.Write(data)
		binary.Write(&b, binary.BigEndian, crc.Sum32())
	}
	ihdr := make([]byte, 13)
	binary.BigEndian.PutUint32(ihdr, w)
	binary.BigEndian.PutUint32(ihdr[4:], h)
	ihdr[8], ihdr[9] = depth, colorType
	chunk("IHDR", ihdr)
	chunk("IDAT", nil)
	chunk("IEND", nil)
	return b.Bytes()
}

// A small 16-bit RGBA PNG declaring 8000×8000 pixels (under the old
// 64-Mpixel cap) would decode to 512 MB plus its RGB copy; the bound counts
// decoded bytes, so it is refused before decoding. An 8-bit grey image of
// the same size is also over the bound, a small 16-bit one is fine.
func TestLoadRGBDecodedBytesBombRefused(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		name        string
		w, h        uint32
		depth, kind byte
	}{{"rgba16", 8000, 8000, 16, 6}, {"grey16", 8000, 8000, 16, 0}, {"grey8", 12000, 12000, 8, 0}} {
		p := filepath.Join(dir, c.name+".png")
		os.WriteFile(p, pngHeader(c.w, c.h, c.depth, c.kind), 0o600)
		_, err := LoadRGB(p)
		if err == nil || !strings.Contains(err.Error(), "MiB to decode (at most 256 MiB)") {
			t.Errorf("%s: %v", c.name, err)
		}
	}
	var b bytes.Buffer
	img := image.NewGray16(image.Rect(0, 0, 300, 200))
	img.Pix[0], img.Pix[1] = 0x01, 0x00 // 256: clipped to 255
	png.Encode(&b, img)
	p := filepath.Join(dir, "ok16.png")
	os.WriteFile(p, b.Bytes(), 0o600)
	rgb, err := LoadRGB(p)
	if err != nil || rgb.W != 300 || rgb.Pix[0] != 255 {
		t.Fatalf("small 16-bit PNG: %v", err)
	}
}

// Training and prediction stop when the context is cancelled, even while
// the loader is busy.
func TestTrainStopsWhenCancelled(t *testing.T) {
	dir := t.TempDir()
	if _, err := WriteSyntheticCXR(dir, 20, 1); err != nil {
		t.Fatal(err)
	}
	_, samples, _ := ImageFolder(dir)
	spec := &Spec{Name: "t", Input: []int{3, 8, 8}, Layers: []Layer{{Op: "flatten"}, {Op: "linear", Name: "fc", Out: 2}}}
	sd, _ := Init(spec, 1)
	net, _ := NewNet(spec, sd, 1)
	ctx, cancel := context.WithCancel(context.Background())
	epochs := 0
	_, err := Train(ctx, net, samples, TrainConfig{Epochs: 1000, LR: 0.01, Batch: 1, Progress: func(EpochStats) {
		epochs++
		cancel()
	}})
	if err != context.Canceled || epochs != 1 {
		t.Fatalf("after %d epochs: %v", epochs, err)
	}
	if _, err := Predict(ctx, net, samples, 1, nil); err != context.Canceled {
		t.Fatalf("predict: %v", err)
	}
}

func Example_specError() {
	_, err := ParseSpec([]byte(`{"input":[3,3,3],"layers":[{"op":"maxpool2d","kernel":4},{"op":"flatten"},{"op":"linear","name":"fc","out":2}]}`))
	fmt.Println(err)
	// Output: model spec: layer 0 (maxpool2d): kernel 4 larger than its 3x3 input
}

// A state dict from the wire whose tensors hold fewer bytes than their
// shapes declare is refused by NewNet instead of panicking in a layer.
func TestNewNetShortTensorRefused(t *testing.T) {
	spec := &Spec{Name: "t", Input: []int{3, 4, 4}, Layers: []Layer{{Op: "batchnorm2d", Name: "bn"}, {Op: "flatten"}, {Op: "linear", Name: "fc", Out: 2}}}
	sd, _ := Init(spec, 1)
	w := sd.Get("fc.weight")
	w.Data = w.Data[:8]
	if _, err := NewNet(spec, sd, 1); err == nil || !strings.Contains(err.Error(), "fc.weight holds 8 bytes") {
		t.Fatalf("short weight: %v", err)
	}
	sd, _ = Init(spec, 1)
	sd.Get("bn.num_batches_tracked").Data = nil
	if _, err := NewNet(spec, sd, 1); err == nil || !strings.Contains(err.Error(), "num_batches_tracked") {
		t.Fatalf("empty counter: %v", err)
	}
}

// A spec file is read whole before it is parsed: one far larger than a
// spec may be is refused by its size, not read into memory.
func TestLoadSpecOversizedFileRefused(t *testing.T) {
	p := filepath.Join(t.TempDir(), "spec.json")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	// Sparse: 1 GiB on paper, nothing on disk.
	if err := f.Truncate(1 << 30); err != nil {
		t.Fatal(err)
	}
	f.Close()
	_, err = LoadSpec(p, nil)
	if err == nil || !strings.Contains(err.Error(), p+": file of 1073741824 bytes is larger than a model spec may be") {
		t.Fatalf("err %v", err)
	}
}

// A spec over the text bound says so, not "unexpected EOF".
func TestReadSpecOverBoundSaysSo(t *testing.T) {
	spec, err := PneumoniaSpec().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	long := append([]byte(strings.Repeat(" ", maxSpecBytes)), spec...)
	if _, err := ParseSpec(long); err == nil || !strings.Contains(err.Error(), "larger than 1048576 bytes") {
		t.Fatalf("err %v", err)
	}
	if _, err := ParseSpec(spec); err != nil {
		t.Fatal(err)
	}
}
