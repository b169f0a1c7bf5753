//go:build interop

// Interop tests against the real Python peers: Debian's python3-torch (1.13)
// and python3-cryptography, and Debian 13's torch 2.6 in the root of
// 'make debian13-root' for the .pt checks. Run with 'make interop', which installs them.
// A missing peer fails these tests; it never skips them.
package persistor

import (
	"archive/zip"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"

	peertool "github.com/flarego/flarego/internal/peer"
	"github.com/flarego/flarego/persistor/pickle"
)

func peer(t *testing.T, args ...string) string { return peertool.Run(t, args...) }

func TestInteropFernet(t *testing.T) {
	dir := t.TempDir()
	k, _ := GenerateKey()
	keyFile := filepath.Join(dir, "go.key")
	os.WriteFile(keyFile, []byte(k.Encode()), 0o600)
	for _, size := range []int{0, 17, 3 << 20} { // fernet-go path and streaming path
		msg := make([]byte, size)
		rand.Read(msg)
		plain := filepath.Join(dir, "plain")
		os.WriteFile(plain, msg, 0o600)

		// Go key -> Python encrypts -> Go decrypts.
		peer(t, "fernet-encrypt", keyFile, plain, filepath.Join(dir, "py.tok"))
		got, err := DecryptFile(filepath.Join(dir, "py.tok"), NoTTL, k)
		if err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("size %d: Go could not open Python's token: %v", size, err)
		}
		// Go encrypts -> Python decrypts.
		tok, err := Encrypt(msg, k)
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, "go.tok"), tok, 0o600)
		peer(t, "fernet-decrypt", keyFile, filepath.Join(dir, "go.tok"), filepath.Join(dir, "back"))
		back, _ := os.ReadFile(filepath.Join(dir, "back"))
		if !bytes.Equal(back, msg) {
			t.Fatalf("size %d: Python read back different bytes", size)
		}
		// The streaming encrypter, as the persistor uses it.
		var buf bytes.Buffer
		enc, _ := NewEncrypter(&buf, k)
		enc.Write(msg)
		enc.Close()
		os.WriteFile(filepath.Join(dir, "stream.tok"), buf.Bytes(), 0o600)
		peer(t, "fernet-decrypt", keyFile, filepath.Join(dir, "stream.tok"), filepath.Join(dir, "back"))
		back, _ = os.ReadFile(filepath.Join(dir, "back"))
		if !bytes.Equal(back, msg) {
			t.Fatalf("size %d: Python read the streamed token differently", size)
		}
	}
	// Python's key file -> Go.
	pk := filepath.Join("..", "testdata", "fernet", "python.key")
	pkey, err := ReadKeyFile(pk)
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := Encrypt([]byte("from go"), pkey)
	os.WriteFile(filepath.Join(dir, "t"), tok, 0o600)
	peer(t, "fernet-decrypt", pk, filepath.Join(dir, "t"), filepath.Join(dir, "o"))
	if b, _ := os.ReadFile(filepath.Join(dir, "o")); string(b) != "from go" {
		t.Fatalf("Python read %q", b)
	}
}

type entry struct {
	DType  string `json:"dtype"`
	Shape  []int  `json:"shape"`
	SHA256 string `json:"sha256"`
}

func manifestOf(sd *StateDict) map[string]entry {
	m := map[string]entry{}
	for _, n := range sd.Names() {
		tn := sd.Get(n)
		sum := sha256.Sum256(tn.Data)
		shape := tn.Shape
		if shape == nil {
			shape = []int{}
		}
		m[n] = entry{tn.DType.String(), shape, hex.EncodeToString(sum[:])}
	}
	return m
}

// writeManifest writes the manifest in the state dict's order.
func writeManifest(t *testing.T, path string, sd *StateDict) {
	m := manifestOf(sd)
	var b bytes.Buffer
	b.WriteString("{")
	for i, n := range sd.Names() {
		if i > 0 {
			b.WriteString(",")
		}
		k, _ := json.Marshal(n)
		v, _ := json.Marshal(m[n])
		fmt.Fprintf(&b, "%s:%s", k, v)
	}
	b.WriteString("}")
	if err := os.WriteFile(path, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestInteropGoWritesTorchReads(t *testing.T) { peertool.EachTorch(t, goWritesTorchReads) }

func goWritesTorchReads(t *testing.T, py peertool.Torch) {
	dir := t.TempDir()
	// One tensor of every dtype with random bytes (valid values for bool),
	// a 0-dim tensor and an empty one.
	sd := NewStateDict()
	for dt := Float32; dt < numDTypes; dt++ {
		tn, _ := NewTensor(dt, 3, 4, 5)
		rand.Read(tn.Data)
		switch dt {
		case Bool:
			for i := range tn.Data {
				tn.Data[i] &= 1
			}
		case Float32, Float64, Float16, BFloat16:
			// Random bytes may be NaNs with payloads; keep them, torch must carry them bit for bit.
		}
		sd.Set("t_"+dt.String(), tn)
	}
	zero, _ := NewTensor(Int64)
	zero.Data[0] = 9
	sd.Set("num_batches_tracked", zero)
	empty, _ := NewTensor(Float32, 0, 2)
	sd.Set("empty", empty)

	cases := map[string]any{
		"bare.pt":      sd,
		"nvflare.pt":   &Checkpoint{Model: sd, ModelName: "PneumoniaModel", MetaProps: &pickle.Dict{Items: []pickle.Item{{Key: "current_round", Value: 3}}}},
		"pneumonia.pt": &Checkpoint{Model: pneumonia(t), ModelName: "PneumoniaModel"},
	}
	for name, v := range cases {
		path := filepath.Join(dir, name)
		f, _ := os.Create(path)
		if err := WritePT(f, v, PTOptions{Prefix: "archive"}); err != nil {
			t.Fatal(err)
		}
		f.Close()
		src := sd
		if c, ok := v.(*Checkpoint); ok {
			src = c.Model
		}
		writeManifest(t, path+".json", src)
		t.Logf("%s: %s", name, py.Run(t, "pt-check", path, path+".json"))
	}
	// The secured persistor's encrypted output: Python decrypts, torch loads.
	k, _ := GenerateKey()
	keyFile := filepath.Join(dir, "k")
	os.WriteFile(keyFile, []byte(k.Encode()), 0o600)
	p := &SecuredPersistor{Path: filepath.Join(dir, "model_parameters.pt.enc"), Key: k, Initial: pneumonia(t)}
	c, _ := p.Load()
	if err := p.Save(c); err != nil {
		t.Fatal(err)
	}
	py.Run(t, "fernet-decrypt", keyFile, p.Path, filepath.Join(dir, "dec.pt"))
	writeManifest(t, filepath.Join(dir, "dec.json"), c.Model)
	py.Run(t, "pt-check", filepath.Join(dir, "dec.pt"), filepath.Join(dir, "dec.json"))
}

// Files the torch writes read in Go to its bytes. torch 2.x's zip files
// carry version, .data/serialization_id and byteorder records
// besides the pickle and the storages; they are checked to be there, so a
// torch that stops writing them is noticed.
func TestInteropTorchWritesGoReads(t *testing.T) { peertool.EachTorch(t, torchWritesGoReads) }

func torchWritesGoReads(t *testing.T, py peertool.Torch) {
	dir := t.TempDir()
	py.Run(t, "pt-make", dir)
	raw, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	var man map[string]map[string]entry
	if err := json.Unmarshal(raw, &man); err != nil {
		t.Fatal(err)
	}
	if len(man) != 5 {
		t.Fatalf("manifest lists %d files", len(man))
	}
	for file, want := range man {
		data, err := os.ReadFile(filepath.Join(dir, file))
		if err != nil {
			t.Fatal(err)
		}
		c, err := DecodeCheckpoint(data)
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if py.Name == "torch2.6" && !strings.Contains(file, "legacy") {
			zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
			if err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			records := map[string]bool{}
			for _, f := range zr.File {
				if i := strings.IndexByte(f.Name, '/'); i >= 0 {
					records[f.Name[i+1:]] = true
				}
			}
			for _, r := range []string{"version", ".data/serialization_id", "byteorder"} {
				if !records[r] {
					t.Errorf("%s: torch 2.6 wrote no %s record (records: %v)", file, r, records)
				}
			}
		}
		got := manifestOf(c.Model)
		if len(got) != len(want) {
			t.Fatalf("%s: %d tensors, torch has %d", file, len(got), len(want))
		}
		for n, w := range want {
			g := got[n]
			if fmt.Sprint(g) != fmt.Sprint(w) {
				t.Errorf("%s %s: Go read %v, torch has %v", file, n, g, w)
			}
		}
	}
}

func TestInteropPickleMatchesCPython(t *testing.T) {
	dir := t.TempDir()
	peer(t, "pickle-dumps", filepath.Join(dir, "py.pkl"))
	want, _ := os.ReadFile(filepath.Join(dir, "py.pkl"))
	big70 := new(big.Int).Neg(new(big.Int).Lsh(big.NewInt(1), 70))
	d := &pickle.Dict{}
	for i := 0; i < 1001; i++ {
		d.Items = append(d.Items, pickle.Item{Key: i, Value: i})
	}
	d1000 := &pickle.Dict{}
	var l1001 pickle.List
	for i := 0; i < 1001; i++ {
		if i < 1000 {
			d1000.Items = append(d1000.Items, pickle.Item{Key: i, Value: nil})
		}
		l1001 = append(l1001, i)
	}
	v := &pickle.OrderedDict{Items: []pickle.Item{
		{Key: "model", Value: &pickle.Dict{Items: []pickle.Item{
			{Key: "a", Value: 1}, {Key: "b", Value: pickle.List{1, 2, 3}}, {Key: "c", Value: pickle.Tuple{nil, true, false}}}}},
		{Key: "n", Value: pickle.List{0, 255, 256, 65535, 65536, -1, -1 << 31, 1 << 31, 1 << 40, big70}},
		{Key: "s", Value: "h\u00e9llo"},
		{Key: "d", Value: d},
		{Key: "d1000", Value: d1000},
		{Key: "l1001", Value: l1001},
		{Key: "l1", Value: pickle.List{"x"}},
		{Key: "od1", Value: &pickle.OrderedDict{Items: []pickle.Item{{Key: "k", Value: "x"}}}},
	}}
	got, err := pickle.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		i := 0
		for i < len(got) && i < len(want) && got[i] == want[i] {
			i++
		}
		t.Fatalf("Go's pickle differs from CPython's protocol 2 at byte %d of %d:\n go ...%x\n py ...%x", i, len(want), got[i:min(i+32, len(got))], want[i:min(i+32, len(want))])
	}
}
