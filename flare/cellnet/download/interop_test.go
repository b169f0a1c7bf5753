//go:build interop

package download

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/cellnet/fobs"
	"github.com/flarego/flarego/flare/cellnet/lobs"
	"github.com/flarego/flarego/flare/npy"
	"github.com/flarego/flarego/internal/peer"
	"github.com/flarego/flarego/persistor"
)

// manifest is what download_peer.py prints of arrays: dtype, shape, and
// the SHA-256 of their bytes.
type manifest map[string][3]any

func manifestOf(t *testing.T, arrays map[string]*persistor.Tensor) manifest {
	m := manifest{}
	for k, a := range arrays {
		code := npy.Code(a.DType)
		if code == "" {
			t.Fatalf("%s: no numpy dtype for %s", k, a.DType)
		}
		shape := []any{}
		for _, d := range a.Shape {
			shape = append(shape, float64(d))
		}
		sum := sha256.Sum256(a.Data)
		m[k] = [3]any{numpyName[code], shape, hex.EncodeToString(sum[:])}
	}
	return m
}

var numpyName = map[string]string{"f4": "float32", "f8": "float64", "f2": "float16", "i8": "int64", "i4": "int32",
	"i2": "int16", "i1": "int8", "u1": "uint8", "b1": "bool"}

func script(t *testing.T) string {
	return filepath.Join(filepath.Dir(peer.Script(t)), "download_peer.py")
}

func runPeer(t *testing.T, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(peer.Python(), append([]string{script(t)}, args...)...)
	cmd.Env = append(os.Environ(), "PYTHONPATH=")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("download_peer.py %v: %v\n%s", args, err, stderr.Bytes())
	}
	return out
}

func unmarshal(t *testing.T, b []byte) manifest {
	var m manifest
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	return m
}

// Our .npz chunks load in numpy; numpy's np.savez and np.savez_compressed
// files load in ours.
func TestInteropNumpyNPZ(t *testing.T) {
	dir := t.TempDir()
	arrays := map[string]*persistor.Tensor{}
	var files []string
	for i, a := range testArrays() {
		arrays[a.Name] = a.Array
		m, err := newMember(a.Name, a.Array)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, fmt.Sprintf("ours%d.npz", i))
		if err := os.WriteFile(p, appendNPZ(nil, []member{allowPickleMember, m}), 0o600); err != nil {
			t.Fatal(err)
		}
		files = append(files, p)
	}
	got := unmarshal(t, runPeer(t, append([]string{"npz-check"}, files...)...))
	delete(got, allowPickle)
	if want := manifestOf(t, arrays); !reflect.DeepEqual(got, want) {
		t.Fatalf("numpy read\n%v\nwant\n%v", got, want)
	}

	runPeer(t, "npz-make", dir)
	want, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"savez.npz", "compressed.npz"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		read, err := readNPZ(b, &budget{items: 100, bytes: 1 << 30})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		ours := map[string]*persistor.Tensor{}
		for _, a := range read {
			ours[a.Name] = a.Array
		}
		if got := manifestOf(t, ours); !reflect.DeepEqual(got, unmarshal(t, want)) {
			t.Fatalf("%s: we read\n%v\nnumpy wrote\n%v", name, got, string(want))
		}
	}
}

// framer talks download_peer.py's frames over its stdin and stdout.
type framer struct {
	w io.Writer
	r *bufio.Reader
}

func (f *framer) write(parts ...[]byte) error {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	if _, err := f.w.Write(binary.BigEndian.AppendUint32(nil, uint32(n))); err != nil {
		return err
	}
	for _, p := range parts {
		if _, err := f.w.Write(p); err != nil {
			return err
		}
	}
	return nil
}

// read returns a frame's tag and the rest.
func (f *framer) read() (string, []byte, error) {
	var h [4]byte
	if _, err := io.ReadFull(f.r, h[:]); err != nil {
		return "", nil, err
	}
	b := make([]byte, binary.BigEndian.Uint32(h[:]))
	if _, err := io.ReadFull(f.r, b); err != nil {
		return "", nil, err
	}
	if len(b) < 3 {
		return "", nil, errors.New("a frame without a tag")
	}
	return string(b[:3]), b[3:], nil
}

func startPeer(t *testing.T, mode string) (*framer, func()) {
	cmd := exec.Command(peer.Python(), script(t), mode, peer.NVFlare(t))
	cmd.Env = append(os.Environ(), "PYTHONPATH=")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return &framer{w: in, r: bufio.NewReader(out)}, func() {
		in.Close()
		if err := cmd.Wait(); err != nil {
			t.Errorf("download_peer.py %s: %v\n%s", mode, err, stderr.Bytes())
		}
		if t.Failed() {
			t.Logf("download_peer.py %s said:\n%s", mode, stderr.Bytes())
		}
	}
}

// A payload NVFlare 2.8.1 writes with its arrays served by its own
// DownloadService, we decode, downloading them through it; a request
// for a batch it does not hold it refuses as ours does.
func TestInteropNVFlareServes(t *testing.T) {
	f, stop := startPeer(t, "serve")
	defer stop()
	tag, payload, err := f.read()
	if err != nil || tag != "PAY" {
		t.Fatalf("%s %v", tag, err)
	}
	requests := 0
	fe := &Fetcher{Request: func(_ context.Context, fqcn string, p []byte) ([]byte, error) {
		if fqcn != "server.py" {
			return nil, fmt.Errorf("no cell %s", fqcn)
		}
		requests++
		if err := f.write(p); err != nil {
			return nil, err
		}
		tag, b, err := f.read()
		if err != nil || tag != "REP" {
			return nil, fmt.Errorf("%s %v", tag, err)
		}
		rc, reply, _ := bytes.Cut(b, []byte("\n"))
		if string(rc) != "ok" {
			return nil, &RequestError{Code: string(rc), Err: errors.New("NVFlare's return code")}
		}
		return reply, nil
	}}
	c, err := lobs.Decode(payload, lobs.V27)
	if err != nil {
		t.Fatal(err)
	}
	v, err := fobs.Decode(c, fe.Options(context.Background()))
	if err != nil {
		t.Fatal(err)
	}
	s := v.(*flare.Shareable)
	got := map[string]*persistor.Tensor{}
	for _, a := range s.DXO.Data {
		got[a.Name] = a.Array
	}
	// The same arrays, as numpy writes them, for the manifest.
	dir := t.TempDir()
	runPeer(t, "npz-make", dir)
	want, _ := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if m := manifestOf(t, got); !reflect.DeepEqual(m, unmarshal(t, want)) {
		t.Fatalf("downloaded\n%v\nwant\n%v", m, string(want))
	}
	// Chunks as NVFlare's: w and b; big alone (over 2 MiB); the other
	// three; then eof.
	if requests != 4 {
		t.Errorf("%d requests", requests)
	}
	t.Logf("task %s: %d arrays in %d requests", s.HeaderString(flare.HeaderTaskName), len(got), requests)

	_, err = fe.Fetch(context.Background(), "server.py", "R-none")
	var re *RequestError
	if !errors.As(err, &re) || re.Code != CodeInvalidRequest {
		t.Errorf("an unknown ref: %v", err)
	}
}

// A payload we write with our arrays by reference, NVFlare 2.8.1's
// fobs.loads decodes, downloading them from our Service.
func TestInteropNVFlareDownloads(t *testing.T) {
	f, stop := startPeer(t, "loads")
	defer stop()
	svc := NewService("site-1.go", Config{})
	defer svc.Close()
	sh := flare.NewShareable()
	sh.SetHeader(flare.HeaderTaskName, "train")
	sh.SetHeader(flare.HeaderContentType, "DXO")
	big := make([]float32, 700000) // over 2 MiB
	for i := range big {
		big[i] = float32(i) / 7
	}
	arrays := append(testArrays(), flare.NamedArray{Name: "big", Array: persistor.FromFloat32(big, 700, 1000)})
	sh.DXO = &flare.DXO{Kind: flare.KindWeights, Data: arrays}
	p, err := svc.Encode(sh)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.write([]byte(p)); err != nil {
		t.Fatal(err)
	}
	requests := 0
	for {
		tag, b, err := f.read()
		if err != nil {
			t.Fatal(err)
		}
		if tag == "END" {
			var got struct {
				TaskName string   `json:"task_name"`
				Arrays   manifest `json:"arrays"`
			}
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatal(err)
			}
			want := map[string]*persistor.Tensor{}
			for _, a := range arrays {
				want[a.Name] = a.Array
			}
			if got.TaskName != "train" || !reflect.DeepEqual(got.Arrays, manifestOf(t, want)) {
				t.Fatalf("NVFlare decoded %+v", got)
			}
			if svc.Len() != 0 {
				t.Error("the batch is still held after NVFlare had it all")
			}
			t.Logf("NVFlare downloaded %d arrays in %d requests", len(got.Arrays), requests)
			return
		}
		if tag != "REQ" {
			t.Fatalf("frame %s", tag)
		}
		requests++
		target, req, _ := bytes.Cut(b, []byte("\n"))
		if string(target) != `["site-1.go"]` {
			t.Fatalf("a request for %s", target)
		}
		reply, err := svc.Handle("server.py", req)
		rc := "ok"
		var re *RequestError
		if errors.As(err, &re) {
			rc = re.Code
		} else if err != nil {
			t.Fatal(err)
		}
		if err := f.write([]byte(rc+"\n"), reply); err != nil {
			t.Fatal(err)
		}
		if rc != "ok" {
			t.Fatalf("refused NVFlare's request %d: %v", requests, err)
		}
	}
}
