package persistor

import (
	"archive/zip"
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flarego/flarego/persistor/pickle"
)

func TestPTRoundTripIsByteIdenticalToTorch(t *testing.T) {
	for _, name := range []string{"sd_small.pt", "nvflare_ckpt.pt", "pneumonia_init.pt", "sd_many.pt", "sd_small_buffer.pt"} {
		t.Run(name, func(t *testing.T) {
			want, err := os.ReadFile(filepath.Join("..", "testdata", "torch", name))
			if err != nil {
				t.Fatal(err)
			}
			v, err := DecodePT(want)
			if err != nil {
				t.Fatal(err)
			}
			prefix := strings.TrimSuffix(name, ".pt")
			if name == "sd_small_buffer.pt" {
				prefix = "archive"
			}
			var got bytes.Buffer
			if err := WritePT(&got, v, PTOptions{Prefix: prefix, Torch113: true}); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.Bytes(), want) {
				os.WriteFile(filepath.Join(t.TempDir(), "got.pt"), got.Bytes(), 0o600)
				t.Fatalf("written file differs from torch's (%d vs %d bytes)", got.Len(), len(want))
			}
		})
	}
}

func decodeFixture(t *testing.T, name string) *Checkpoint {
	t.Helper()
	c, err := DecodeCheckpoint(readFixture(t, "torch", name))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return c
}

func floats(t *testing.T, tn *Tensor) []float64 {
	t.Helper()
	out := make([]float64, tn.NumElements())
	for i := range out {
		out[i] = tn.Float64At(i)
	}
	return out
}

func equalFloats(a, b []float64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestReadSmallFormats(t *testing.T) {
	// sd_small: conv.weight = arange(18)/4, conv.bias = [-1.5, 2.5], num_batches_tracked = 7,
	// in the zip format, saved to a buffer, and in the legacy format.
	w := make([]float64, 18)
	for i := range w {
		w[i] = float64(i) / 4
	}
	for _, name := range []string{"sd_small.pt", "sd_small_buffer.pt", "sd_small_legacy.pt"} {
		c := decodeFixture(t, name)
		if !c.Bare || c.Model.Len() != 3 {
			t.Fatalf("%s: %d tensors, bare %v", name, c.Model.Len(), c.Bare)
		}
		cw := c.Model.Get("conv.weight")
		if cw.DType != Float32 || fmt.Sprint(cw.Shape) != "[2 1 3 3]" || !equalFloats(floats(t, cw), w) {
			t.Errorf("%s: conv.weight = %v %v", name, cw, floats(t, cw))
		}
		if got := floats(t, c.Model.Get("conv.bias")); !equalFloats(got, []float64{-1.5, 2.5}) {
			t.Errorf("%s: conv.bias = %v", name, got)
		}
		nb := c.Model.Get("bn.num_batches_tracked")
		if nb.DType != Int64 || len(nb.Shape) != 0 || nb.Float64At(0) != 7 {
			t.Errorf("%s: num_batches_tracked = %v %v", name, nb, nb.Float64At(0))
		}
	}
}

func TestReadViewsAndDTypes(t *testing.T) {
	c := decodeFixture(t, "sd_views.pt")
	a := floats(t, c.Model.Get("a"))
	if got := floats(t, c.Model.Get("b")); !equalFloats(got, a[4:8]) {
		t.Errorf("b (a[4:8]) = %v", got)
	}
	// c is a.view(3,4).t(): element (i,j) = a[j*4+i].
	cc := c.Model.Get("c")
	want := make([]float64, 0, 12)
	for i := 0; i < 4; i++ {
		for j := 0; j < 3; j++ {
			want = append(want, a[j*4+i])
		}
	}
	if got := floats(t, cc); fmt.Sprint(cc.Shape) != "[4 3]" || !equalFloats(got, want) {
		t.Errorf("c = %v %v, want %v", cc.Shape, got, want)
	}
	d := decodeFixture(t, "sd_dtypes.pt")
	wantTypes := map[string]DType{"f32": Float32, "f64": Float64, "f16": Float16, "bf16": BFloat16,
		"i64": Int64, "i32": Int32, "i16": Int16, "i8": Int8, "u8": Uint8, "bool": Bool}
	for name, dt := range wantTypes {
		tn := d.Model.Get(name)
		if tn == nil || tn.DType != dt {
			t.Errorf("%s: got %v, want %s", name, tn, dt)
			continue
		}
		if got := floats(t, tn); !equalFloats(got, []float64{1, 0, 1}) {
			t.Errorf("%s = %v", name, got)
		}
	}
}

func TestReadModuleKeepsMetadata(t *testing.T) {
	c := decodeFixture(t, "sd_module.pt")
	if c.Model.Attrs == nil {
		t.Fatal("_metadata lost")
	}
	if _, ok := c.Model.Attrs.Get("_metadata"); !ok {
		t.Fatal("_metadata lost")
	}
}

func TestReadNVFlareCheckpoint(t *testing.T) {
	k := mustKey(t, string(readFixture(t, "nvflare", "fernet.key")))
	c, err := ReadCheckpointFile(filepath.Join("..", "testdata", "nvflare", "pneumonia-model_parameters.pt.enc"), k)
	if err != nil {
		t.Fatal(err)
	}
	if c.Bare || c.Model.Len() != 18 {
		t.Fatalf("bare %v, %d tensors", c.Bare, c.Model.Len())
	}
	// After NVFlare aggregates, num_batches_tracked is a float64 0-dim tensor.
	if nb := c.Model.Get("bn1.num_batches_tracked"); nb.DType != Float64 || len(nb.Shape) != 0 {
		t.Errorf("bn1.num_batches_tracked = %v", nb)
	}
	if fc := c.Model.Get("fc.weight"); fmt.Sprint(fc.Shape) != "[2 401408]" {
		t.Errorf("fc.weight = %v", fc)
	}
	tc, ok := c.TrainConf.(*pickle.Dict)
	if !ok {
		t.Fatalf("train_conf = %#v", c.TrainConf)
	}
	train, _ := tc.Get("train")
	if m, _ := train.(*pickle.Dict).Get("model"); m != "PneumoniaModel" {
		t.Errorf("train_conf.train.model = %v", m)
	}
	if _, err := ReadCheckpointFile(filepath.Join("..", "testdata", "nvflare", "pneumonia-model_parameters.pt.enc"), nil); err == nil {
		t.Error("encrypted file read without a key")
	}
}

func TestWriteAllDTypesRoundTrip(t *testing.T) {
	sd := NewStateDict()
	for dt := Float32; dt < numDTypes; dt++ {
		tn, _ := NewTensor(dt, 2, 3)
		for i := range tn.Data {
			tn.Data[i] = byte(i*7 + int(dt))
		}
		if dt == Bool {
			for i := range tn.Data {
				tn.Data[i] &= 1
			}
		}
		sd.Set(dt.String(), tn)
	}
	scalar, _ := NewTensor(Int64)
	scalar.Data[0] = 42
	sd.Set("scalar", scalar)
	empty, _ := NewTensor(Float32, 0, 4)
	sd.Set("empty", empty)
	var buf bytes.Buffer
	if err := WritePT(&buf, &Checkpoint{Model: sd}, PTOptions{}); err != nil {
		t.Fatal(err)
	}
	c, err := DecodeCheckpoint(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if c.Bare || c.Model.Len() != sd.Len() {
		t.Fatalf("read back %d tensors", c.Model.Len())
	}
	for _, n := range sd.Names() {
		a, b := sd.Get(n), c.Model.Get(n)
		if a.DType != b.DType || fmt.Sprint(a.Shape) != fmt.Sprint(b.Shape) || !bytes.Equal(a.Data, b.Data) {
			t.Errorf("%s: wrote %v, read %v", n, a, b)
		}
	}
}

// zipPT builds a .pt-like zip from named records.
func zipPT(t testing.TB, method uint16, records ...string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for i := 0; i < len(records); i += 2 {
		w, err := zw.CreateHeader(&zip.FileHeader{Name: records[i], Method: method})
		if err != nil {
			t.Fatal(err)
		}
		w.Write([]byte(records[i+1]))
	}
	zw.Close()
	return buf.Bytes()
}

func TestReadDeflatedRecords(t *testing.T) {
	src := readFixture(t, "torch", "sd_small.pt")
	zr, _ := zip.NewReader(bytes.NewReader(src), int64(len(src)))
	var recs []string
	for _, f := range zr.File {
		rc, _ := f.Open()
		b, _ := io.ReadAll(rc)
		recs = append(recs, f.Name, string(b))
	}
	c, err := DecodeCheckpoint(zipPT(t, zip.Deflate, recs...))
	if err != nil {
		t.Fatal(err)
	}
	if got := floats(t, c.Model.Get("conv.bias")); !equalFloats(got, []float64{-1.5, 2.5}) {
		t.Errorf("conv.bias = %v", got)
	}
}

// tensorPickle is a protocol 2 pickle of {"w": tensor} with the given
// storage numel, offset, size and stride, as torch would write it.
func tensorPickle(t testing.TB, numel, offset int, size, stride pickle.Tuple) string {
	t.Helper()
	pid := pickle.Tuple{"storage", pickle.Global{Module: "torch", Name: "FloatStorage"}, "0", "cpu", numel}
	v := &pickle.OrderedDict{Items: []pickle.Item{{Key: "w", Value: &pickle.Reduce{Func: rebuildTensorV2,
		Args: pickle.Tuple{pickle.PersistentID{ID: pid}, offset, size, stride, false, &pickle.OrderedDict{}}}}}}
	b, err := pickle.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestBadPT(t *testing.T) {
	good := readFixture(t, "torch", "sd_small.pt")
	// REDUCE on os.system: the classic pickle exploit.
	exploit := "\x80\x02cos\nsystem\nq\x00X\x05\x00\x00\x00touchq\x01\x85q\x02Rq\x03."
	cases := []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "not a PyTorch .pt file"},
		{"1024 zero bytes", make([]byte, 1024), "not a PyTorch .pt file"},
		{"text", []byte("hello, this is not a model file at all"), "not a PyTorch .pt file"},
		{"truncated", good[:len(good)/2], "not a PyTorch .pt file"},
		{"hostile global", zipPT(t, zip.Store, "a/data.pkl", exploit, "a/version", "3\n"), "os.system"},
		{"shape overflow", zipPT(t, zip.Store, "a/data.pkl", tensorPickle(t, 4, 0, pickle.Tuple{1 << 40, 1 << 40}, pickle.Tuple{1, 1}), "a/data/0", "0123456789abcdef"), "2^40"},
		{"view past storage", zipPT(t, zip.Store, "a/data.pkl", tensorPickle(t, 4, 2, pickle.Tuple{4}, pickle.Tuple{1}), "a/data/0", "0123456789abcdef"), "past its storage"},
		{"record shorter than storage", zipPT(t, zip.Store, "a/data.pkl", tensorPickle(t, 8, 0, pickle.Tuple{8}, pickle.Tuple{1}), "a/data/0", "0123456789abcdef"), "fewer than 8"},
		{"missing record", zipPT(t, zip.Store, "a/data.pkl", tensorPickle(t, 4, 0, pickle.Tuple{4}, pickle.Tuple{1})), "missing"},
		{"no data.pkl", zipPT(t, zip.Store, "a/version", "3\n"), "no a/data.pkl"},
		{"not in a folder", zipPT(t, zip.Store, "data.pkl", "x"), "not in a folder"},
		{"legacy truncated", readFixture(t, "torch", "sd_small_legacy.pt")[:300], "truncated"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := DecodePT(c.data)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err %v, want one saying %q", err, c.want)
			}
		})
	}
	// A flipped byte inside a tensor record is caught by the checksum.
	bad := bytes.Clone(good)
	bad[520] ^= 0xff // inside data/0, which starts at byte 512
	if _, err := DecodePT(bad); err == nil || !strings.Contains(err.Error(), "checksum") {
		t.Errorf("corrupt record: %v", err)
	}
}

// torch 2.x loads with weights_only=True by default. Its unpickler
// (torch/_weights_only_unpickler.py) accepts only these opcodes and, among
// what we write, these globals; everything WritePT emits must stay inside.
func TestWrittenPickleStaysInsideTorch2WeightsOnly(t *testing.T) {
	allowedOps := map[byte]bool{}
	for _, op := range []byte("c\x81Rbaesu(t\x85\x86\x87N\x89\x88)]}\x8fQJKMGhjqrXU\x8a\x80.") {
		allowedOps[op] = true
	}
	allowedGlobals := map[string]bool{"collections.OrderedDict": true, "torch._utils._rebuild_tensor_v2": true}
	for _, info := range dtypeInfo {
		allowedGlobals["torch."+info.storage] = true
	}
	sd := decodeFixture(t, "sd_module.pt").Model // with _metadata, so BUILD is exercised
	for dt := Float32; dt < numDTypes; dt++ {
		tn, _ := NewTensor(dt, 2)
		sd.Set("x_"+dt.String(), tn)
	}
	var buf bytes.Buffer
	ck := &Checkpoint{Model: sd, MetaProps: &pickle.Dict{Items: []pickle.Item{{Key: "current_round", Value: 1 << 40}}}}
	if err := WritePT(&buf, ck, PTOptions{}); err != nil {
		t.Fatal(err)
	}
	zr, _ := zip.NewReader(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
	var pkl []byte
	for _, f := range zr.File {
		if strings.HasSuffix(f.Name, "/data.pkl") {
			pkl, _ = newPTDecoder(buf.Len()).record(buf.Bytes(), f)
		}
	}
	_, err := pickle.Walk(pkl, len(pkl), func(op byte, g *pickle.Global) error {
		if !allowedOps[op] {
			return fmt.Errorf("opcode %q", op)
		}
		if g != nil && !allowedGlobals[g.String()] {
			return fmt.Errorf("global %s", g)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("torch 2.x weights_only would refuse: %v", err)
	}
}
