package wire20

import (
	"bytes"
	"fmt"
	"math"
	"runtime"
	"strings"
	"testing"

	protobuf "google.golang.org/protobuf/proto"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/internal/flaretest"
	"github.com/flarego/flarego/persistor"
	"github.com/flarego/flarego/persistor/pickle"
	"github.com/flarego/flarego/proto/fedlearn"
)

func TestDecodeGoldenShareables(t *testing.T) {
	s, err := DecodeShareable(flaretest.Fixture(t, "golden", "shareable_dxo_f32_3x3.pkl"))
	if err != nil {
		t.Fatal(err)
	}
	if s.HeaderString(flare.HeaderContentType) != "DXO" || s.DXO == nil || s.DXO.Kind != flare.KindWeights {
		t.Fatalf("headers %v dxo %v", s.Headers, s.DXO)
	}
	jar := s.CookieJar()
	if v, _ := jar.Get(flare.HeaderTaskID); v != "11111111-2222-4333-8444-555555555555" {
		t.Errorf("cookie jar %v", jar)
	}
	w := s.DXO.Get("numpy_key")
	f, _ := w.Float32s()
	if w.DType != persistor.Float32 || len(w.Shape) != 2 || f[0] != 2 || f[8] != 10 {
		t.Errorf("numpy_key = %v %v", w, f)
	}

	m, err := DecodeShareable(flaretest.Fixture(t, "golden", "shareable_dxo_multi.pkl"))
	if err != nil {
		t.Fatal(err)
	}
	if len(m.DXO.Data) != 5 {
		t.Fatalf("%d arrays", len(m.DXO.Data))
	}
	if n, err := m.DXO.NumSteps(); err != nil || n != 4 {
		t.Errorf("NUM_STEPS = %v, %v", n, err)
	}
	var scalar *persistor.Tensor
	for _, a := range m.DXO.Data {
		if a.Array.DType == persistor.Int64 {
			scalar = a.Array
		}
	}
	if scalar == nil || len(scalar.Shape) != 0 || scalar.Float64At(0) != 7 {
		t.Errorf("int64 0-d array = %v", scalar)
	}
	for _, name := range []string{"shareable_dxo_bare.pkl", "shareable_empty.pkl"} {
		if _, err := DecodeShareable(flaretest.Fixture(t, "golden", name)); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := DecodeShareable(flaretest.Fixture(t, "shareable.pkl")); err != nil {
		t.Error(err)
	}
}

// Cross-site evaluation: the validate task NVFlare's CrossSiteModelEval
// sends and the METRICS result its validators return.
func TestDecodeValidateTaskAndMetrics(t *testing.T) {
	task, err := DecodeShareable(flaretest.Fixture(t, "golden", "shareable_validate_task.pkl"))
	if err != nil {
		t.Fatal(err)
	}
	if task.HeaderString(flare.HeaderModelOwner) != "site-2" || task.HeaderString(flare.HeaderTaskName) != "validate" {
		t.Errorf("headers %v", task.Headers)
	}
	if v, _ := task.CookieJar().Get(flare.HeaderModelOwner); v != "site-2" {
		t.Errorf("cookie jar %v", task.CookieJar())
	}
	if task.DXO == nil || task.DXO.Kind != flare.KindWeights || len(task.DXO.Data) != 3 || len(task.DXO.Values) != 0 {
		t.Fatalf("DXO %+v", task.DXO)
	}
	res, err := DecodeShareable(flaretest.Fixture(t, "golden", "shareable_metrics_result.pkl"))
	if err != nil {
		t.Fatal(err)
	}
	if res.DXO == nil || res.DXO.Kind != flare.KindMetrics || len(res.DXO.Data) != 0 {
		t.Fatalf("DXO %+v", res.DXO)
	}
	for name, want := range map[string]float64{"val_acc": 0.875, "val_loss": 0.3125, "val_images": 8} {
		if v, ok := res.DXO.Metric(name); !ok || v != want {
			t.Errorf("%s = %v, %v; want %v", name, v, ok, want)
		}
	}
	if _, ok := res.DXO.Metric("missing"); ok {
		t.Error("a missing metric was found")
	}
	// Our encoding of the result decodes to the same values, in order.
	b, err := EncodeShareable(res)
	if err != nil {
		t.Fatal(err)
	}
	again, err := DecodeShareable(b)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(again.DXO.Values) != fmt.Sprint(res.DXO.Values) || again.ReturnCode() != flare.RCOK {
		t.Errorf("round trip: %v, want %v", again.DXO.Values, res.DXO.Values)
	}
	// Anything else than a number is refused on both sides.
	bad := &flare.Shareable{Headers: &pickle.Dict{}, DXO: &flare.DXO{Kind: flare.KindMetrics, Values: []pickle.Item{{Key: "x", Value: pickle.List{int64(1)}}}}}
	if _, err := EncodeShareable(bad); err == nil {
		t.Error("a list metric was encoded")
	}
}

func TestDecodeFLContext(t *testing.T) {
	c, err := DecodeFLContext(flaretest.Fixture(t, "golden", "fl_context_client.pkl"))
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := c.Get("__client_name__"); v != "site-1" {
		t.Errorf("client name %v", v)
	}
	if v, _ := c.Get("fl_token"); v != "00000000-0000-4000-8000-000000000001" {
		t.Errorf("token %v", v)
	}
	if c.Logger != "FLContext" {
		t.Errorf("logger %q", c.Logger)
	}
	if _, err := DecodeFLContext(flaretest.Fixture(t, "flcontext.pkl")); err != nil {
		t.Error(err)
	}
}

// Every task and result a real NVFlare 2.0.5 server and client sent.
func TestDecodeWireCaptures(t *testing.T) {
	cases := []struct {
		file, task string
		arrays     int
	}{
		{"gettask-train.CurrentTask.pb", "train", 1},
		{"gettask-__try_again__.CurrentTask.pb", flare.TaskTryAgain, 0},
		{"gettask-__end_run__.CurrentTask.pb", flare.TaskEndRun, 0},
		{"pneumonia-gettask-train.CurrentTask.pb", "train", 18},
	}
	for _, c := range cases {
		var ct fedlearn.CurrentTask
		if err := protobuf.Unmarshal(flaretest.Fixture(t, "wire", c.file), &ct); err != nil {
			t.Fatalf("%s: %v", c.file, err)
		}
		if ct.TaskName != c.task {
			t.Errorf("%s: task %q", c.file, ct.TaskName)
		}
		s, err := DecodeShareable(ct.Data.Params["data"].Ndarray)
		if err != nil {
			t.Fatalf("%s: %v", c.file, err)
		}
		got := 0
		if s.DXO != nil {
			got = len(s.DXO.Data)
		}
		if got != c.arrays {
			t.Errorf("%s: %d arrays, want %d", c.file, got, c.arrays)
		}
		if c.task == flare.TaskTryAgain {
			if w, ok := s.WaitTime(); !ok || w != 2 {
				t.Errorf("%s: wait time %v, %v", c.file, w, ok)
			}
		}
		if c.task == "train" && s.HeaderString(flare.HeaderTaskID) == "" {
			t.Errorf("%s: no task id", c.file)
		}
		if fc, ok := ct.Data.Params["fl_context"]; ok {
			if _, err := DecodeFLContext(fc.Ndarray); err != nil {
				t.Errorf("%s fl_context: %v", c.file, err)
			}
		}
	}
	for _, f := range []string{"submit-train.Contribution.pb", "pneumonia-submit-train.Contribution.pb"} {
		var c fedlearn.Contribution
		if err := protobuf.Unmarshal(flaretest.Fixture(t, "wire", f), &c); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		s, err := DecodeShareable(c.Data.Params["data"].Ndarray)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if s.DXO == nil || s.DXO.Kind != flare.KindWeights || s.CookieJar() == nil {
			t.Errorf("%s: %v", f, s.Headers)
		}
		if strings.HasPrefix(f, "pneumonia") {
			if n, err := s.DXO.NumSteps(); err != nil || n <= 0 {
				t.Errorf("%s: NUM_STEPS %v %v", f, n, err)
			}
			if fc := s.DXO.Get("fc.weight"); fc == nil || len(fc.Shape) != 2 || fc.Shape[1] != 401408 {
				t.Errorf("%s: fc.weight %v", f, fc)
			}
		}
	}
}

func TestShareableRoundTrip(t *testing.T) {
	orig, err := DecodeShareable(flaretest.Fixture(t, "golden", "shareable_dxo_multi.pkl"))
	if err != nil {
		t.Fatal(err)
	}
	orig.SetHeader(flare.HeaderRC, flare.RCOK)
	b, err := EncodeShareable(orig)
	if err != nil {
		t.Fatal(err)
	}
	back, err := DecodeShareable(b)
	if err != nil {
		t.Fatal(err)
	}
	for i, a := range orig.DXO.Data {
		c := back.DXO.Data[i]
		if a.Name != c.Name || a.Array.DType != c.Array.DType || !bytes.Equal(a.Array.Data, c.Array.Data) {
			t.Fatalf("array %s differs after a round trip", a.Name)
		}
	}
	if back.ReturnCode() != flare.RCOK || back.CookieJar() == nil {
		t.Fatalf("headers %v", back.Headers)
	}
	ctx := &flare.FLContext{Props: []flare.Prop{{Name: "__run_num__", Value: int64(1), Mask: 1}, {Name: "__client_name__", Value: "site-1", Mask: 1}}}
	cb, err := EncodeFLContext(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := DecodeFLContext(cb)
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := c2.Get("__client_name__"); v != "site-1" {
		t.Fatalf("FLContext round trip: %v", c2.Props)
	}
}

func TestHostileWirePickles(t *testing.T) {
	for name, data := range map[string]string{
		"os.system":       "\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x8c\x06system\x93\x8c\x02id\x85R.",
		"builtins.eval":   "\x80\x02cbuiltins\neval\nX\x01\x00\x00\x001\x85R.",
		"object array":    "\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85C\x01b\x87R(K\x01K\x01\x85cnumpy\ndtype\nX\x02\x00\x00\x00O8\x89\x88\x87R\x89]tb.",
		"not a Shareable": "\x80\x02}.",
		"truncated":       "\x80\x04\x95\x10\x00",
	} {
		if _, err := DecodeShareable([]byte(data)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestWeightsDXO(t *testing.T) {
	sd := persistor.NewStateDict()
	sd.Set("w", persistor.FromFloat32([]float32{1, float32(math.Pi)}, 2))
	d := flare.WeightsDXO(sd, &pickle.Dict{Items: []pickle.Item{{Key: flare.MetaNumStepsCurrentRound, Value: 5}}})
	s := flare.NewShareable()
	s.DXO = d
	b, err := EncodeShareable(s)
	if err != nil {
		t.Fatal(err)
	}
	back, err := DecodeShareable(b)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := back.DXO.NumSteps(); n != 5 {
		t.Fatalf("NUM_STEPS %d", n)
	}
	if back.HeaderString(flare.HeaderContentType) != "DXO" {
		t.Fatalf("no __content_type__ DXO header (NVFlare's aggregator requires it)")
	}
}

// "array + 1" on a 0-dim array is a numpy scalar, pickled through
// numpy.core.multiarray.scalar; real NVFlare trainers send those. The file
// is pickle.dumps of such a Shareable (protocol 4, made with numpy).
func TestDecodeNumpyScalar(t *testing.T) {
	s, err := DecodeShareable(flaretest.Fixture(t, "numpy_scalar_shareable.pkl"))
	if err != nil {
		t.Fatal(err)
	}
	n := s.DXO.Get("n")
	if n == nil || n.DType != persistor.Int64 || len(n.Shape) != 0 || n.Float64At(0) != 6 {
		t.Fatalf("n = %v", n)
	}
	if w, _ := s.DXO.Get("w").Float32s(); w[1] != 3.5 {
		t.Fatalf("w = %v", w)
	}
}

// A numpy array's declared shape is checked against its bytes before
// anything is allocated: 8 TiB declared with 8 bytes present costs nothing.
func TestNumpyShapeBombRefused(t *testing.T) {
	for _, c := range []struct {
		data []byte
		want string
	}{
		{flaretest.NumpyShapeBomb(t, EncodeShareable), "numpy array of shape [1048576 1048576] declares more bytes than any message holds (8 present)"},
		{shapedArray(t, persistor.Float64, []int{1 << 40, 1 << 40}, 8), "declares more bytes"}, // wraps uint64
		{shapedArray(t, persistor.Uint8, []int{1<<30 + 1}, 1), "declares more bytes"},
		{shapedArray(t, persistor.Float32, []int{2, 2}, 15), "has 15 bytes, want 16"},
	} {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, err := DecodeShareable(c.data)
		runtime.ReadMemStats(&after)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("got %v, want %q", err, c.want)
		}
		if d := after.TotalAlloc - before.TotalAlloc; d > 1<<20 {
			t.Errorf("%s: decoding allocated %d bytes", c.want, d)
		}
	}
}
