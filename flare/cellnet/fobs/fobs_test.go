package fobs

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/cellnet/internal/capture"
	"github.com/flarego/flarego/flare/cellnet/lobs"
	"github.com/flarego/flarego/flare/cellnet/msgpk"
	"github.com/flarego/flarego/flare/internal/flaretest"
	"github.com/flarego/flarego/persistor"
	"github.com/flarego/flarego/persistor/pickle"
)

// Every FOBS payload of real NVFlare 2.8.1 and main runs decodes; tasks
// and results are Shareables with a WEIGHTS DXO whose array comes by
// reference, admin requests are Messages.
func TestCapturedPayloads(t *testing.T) {
	for _, name := range []string{"nvflare-2.8.1", "nvflare-main"} {
		var refs []ArrayRef
		opts := Options{Array: func(r ArrayRef) (*persistor.Tensor, error) {
			refs = append(refs, r)
			return persistor.FromFloat32([]float32{0}, 1), nil
		}}
		kinds := map[string]int{}
		for i, p := range capture.Payloads(t, name) {
			c, err := lobs.Decode(p.Data, lobs.V27)
			if err != nil {
				t.Fatalf("%s payload %d: %v", name, i, err)
			}
			v, err := Decode(c, opts)
			if err != nil {
				t.Fatalf("%s payload %d (%s/%s): %v", name, i, p.Channel, p.Topic, err)
			}
			switch x := v.(type) {
			case *flare.Shareable:
				kinds["Shareable"]++
				if p.Topic == "server_command:get_task" && x.HeaderString(flare.HeaderTaskName) == "train" {
					if x.DXO == nil || x.DXO.Kind != flare.KindWeights || len(x.DXO.Data) != 1 {
						t.Fatalf("%s payload %d: train task DXO %+v", name, i, x.DXO)
					}
					kinds["train task"]++
				}
			case *Message:
				kinds["Message"]++
				if x.Topic == "" || x.ID == "" {
					t.Fatalf("%s payload %d: message %+v", name, i, x)
				}
			default:
				kinds["other"]++
			}
		}
		if kinds["train task"] < 3 || kinds["Message"] < 5 || len(refs) < 3 || refs[0].FQCN == "" || refs[0].RefID == "" {
			t.Fatalf("%s: %v, refs %v", name, kinds, refs)
		}
		t.Logf("%s: %v, %d arrays by reference (first %+v)", name, kinds, len(refs), refs[0])
	}
}

func body(t *testing.T, v any) *lobs.Container {
	b, err := msgpk.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return &lobs.Container{Main: b}
}

func typed(name, dc string, data any) msgpk.Map {
	return msgpk.Map{{Key: keyType, Value: name}, {Key: keyData, Value: data}, {Key: keyDecomposer, Value: dc}}
}

// Any type or decomposer off the allowlist is refused by name; so are a
// reference to a missing datum and an array reference nothing resolves.
func TestHostilePayloadsRefused(t *testing.T) {
	for name, c := range map[string]struct {
		v    any
		want string
	}{
		"os.system":        {typed("os.system", "", "ls"), "os.system"},
		"unknown type":     {typed("evil.Class", "nvflare.fuel.utils.fobs.decomposer.DataClassDecomposer", msgpk.Map{}), "evil.Class"},
		"other decomposer": {typed("nvflare.apis.shareable.Shareable", "evil.Decomposer", msgpk.Map{}), "decomposer not allowed"},
		"nested":           {msgpk.Map{{Key: "x", Value: []any{typed("subprocess.Popen", "", nil)}}}, "subprocess.Popen"},
		"key position":     {msgpk.Map{{Key: typed("builtins.eval", "", "1"), Value: 1}}, "builtins.eval"},
	} {
		_, err := Decode(body(t, c.v), Options{})
		if !errors.Is(err, ErrType) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v", name, err)
		}
	}
	ref := typed("nvflare.fuel.utils.fobs.datum.DatumRef", "nvflare.fuel.utils.fobs.decomposer.DataClassDecomposer",
		msgpk.Map{{Key: "data", Value: msgpk.Map{{Key: "datum_id", Value: "00000000-0000-0000-0000-000000000000"}, {Key: "unwrap", Value: true}}}})
	if _, err := Decode(body(t, ref), Options{}); err == nil || !strings.Contains(err.Error(), "does not hold") {
		t.Errorf("missing datum: %v", err)
	}
	arr := typed("numpy.ndarray", "nvflare.app_common.decomposers.numpy_decomposers.NumpyArrayDecomposer", msgpk.Map{{Key: "type", Value: "ref"}, {Key: "data", Value: "T0"}})
	if _, err := Decode(body(t, arr), Options{}); err == nil || !strings.Contains(err.Error(), "by reference") {
		t.Errorf("unresolved array: %v", err)
	}
	deep := &lobs.Container{Main: append(bytes.Repeat([]byte{0x91}, 100000), 0xa1, 'x')}
	if _, err := Decode(deep, Options{}); err == nil {
		t.Error("a recursion bomb was accepted")
	}
}

// Builtin containers, numpy scalars and native arrays decode to Go values.
func TestBuiltins(t *testing.T) {
	v, err := Decode(body(t, []any{
		typed("tuple", "nvflare.fuel.utils.fobs.decomposers.core_decomposers.TupleDecomposer", []any{int64(1), "a"}),
		typed("set", "nvflare.fuel.utils.fobs.decomposers.core_decomposers.SetDecomposer", []any{int64(2)}),
		typed("datetime.datetime", "nvflare.fuel.utils.fobs.decomposers.core_decomposers.DatetimeDecomposer", "2026-12-01T18:03:57.096082"),
		typed("numpy.float32", "nvflare.app_common.decomposers.numpy_decomposers.Float32ScalarDecomposer", 0.5),
		typed("nvflare.apis.dxo.DataKind", "nvflare.fuel.utils.fobs.decomposer.EnumTypeDecomposer", "METRICS"),
	}), Options{})
	if err != nil {
		t.Fatal(err)
	}
	l := v.([]any)
	if tu, ok := l[0].(Tuple); !ok || len(tu) != 2 {
		t.Errorf("tuple %v", l[0])
	}
	if _, ok := l[1].(Set); !ok {
		t.Errorf("set %v", l[1])
	}
	if l[3] != 0.5 || l[4] != "METRICS" {
		t.Errorf("scalar %v enum %v", l[3], l[4])
	}
}

func FuzzDecode(f *testing.F) {
	c := &lobs.Container{Main: []byte{0x81, 0xad, '_', '_', 'f', 'o', 'b', 's', '_', 't', 'y', 'p', 'e', '_', '_', 0xa1, 'x'}}
	f.Add(c.Encode(lobs.V27))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := lobs.Decode(b, lobs.V27)
		if err != nil {
			return
		}
		Decode(c, Options{Array: func(ArrayRef) (*persistor.Tensor, error) { return nil, errors.New("no") }})
	})
}

// What Encode writes, Decode reads back to the same Shareable.
func TestEncodeRoundTrip(t *testing.T) {
	s := flare.NewShareable()
	s.SetHeader(flare.HeaderTaskName, "train")
	s.SetHeader("pair", pickle.Tuple{int64(1), "a"})
	s.SetHeader("__peer_ctx__", &flare.FLContext{Props: []flare.Prop{{Name: "__identity_name__", Value: "site-1"}}})
	s.DXO = flare.WeightsDXO(flaretest.InitModel(), &pickle.Dict{Items: []pickle.Item{{Key: flare.MetaNumStepsCurrentRound, Value: int64(3)}}})
	b, err := Encode(s)
	if err != nil {
		t.Fatal(err)
	}
	c, err := lobs.Decode(b, lobs.V27)
	if err != nil {
		t.Fatal(err)
	}
	v, err := Decode(c, Options{})
	if err != nil {
		t.Fatal(err)
	}
	got := v.(*flare.Shareable)
	if got.HeaderString(flare.HeaderTaskName) != "train" || len(got.DXO.Data) != 2 || got.DXO.Kind != flare.KindWeights {
		t.Fatalf("%+v", got)
	}
	if p, _ := got.Header("pair"); !reflect.DeepEqual(p, pickle.Tuple{int64(1), "a"}) {
		t.Fatalf("pair %#v", p)
	}
	if ctx, _ := got.Header("__peer_ctx__"); ctx.(*flare.FLContext).Props[0].Value != "site-1" {
		t.Fatalf("ctx %#v", ctx)
	}
	if w := got.DXO.Get("w"); w == nil || !reflect.DeepEqual(w.Data, flaretest.InitModel().Get("w").Data) {
		t.Fatalf("w %v", w)
	}
}

// With ArrayRefs, arrays travel as references to one batch (an array met
// twice is one item) and the payload says where the batch is served, as
// NVFlare 2.7.2+ writes it; without arrays nothing is served.
func TestEncodeByReference(t *testing.T) {
	w := persistor.FromFloat32([]float32{1, 2, 3}, 3)
	n := persistor.FromFloat32([]float32{4}, 1)
	s := flare.NewShareable()
	s.DXO = &flare.DXO{Kind: flare.KindWeights, Data: []flare.NamedArray{{Name: "w", Array: w}, {Name: "n", Array: n}, {Name: "w2", Array: w}}}
	var served []flare.NamedArray
	b, err := EncodeWith(s, EncodeOptions{ArrayRefs: func(items []flare.NamedArray) (string, string, error) {
		served = items
		return "site-1.job", "R-1", nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(served, []flare.NamedArray{{Name: "T0", Array: w}, {Name: "T1", Array: n}}) {
		t.Fatalf("served %v", served)
	}
	c, err := lobs.Decode(b, lobs.V27)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Datums) != 1 || c.Datums[0].Marker != lobs.MarkerText || c.Datums[0].Type != dotNumpyDownload ||
		string(c.Datums[0].Value) != `{"fqcn": "site-1.job", "ref_id": "R-1"}` {
		t.Fatalf("datums %+v", c.Datums)
	}
	var asked []ArrayRef
	v, err := Decode(c, Options{Array: func(r ArrayRef) (*persistor.Tensor, error) {
		asked = append(asked, r)
		for _, it := range served {
			if it.Name == r.Item {
				return it.Array, nil
			}
		}
		return nil, errors.New("no such item")
	}})
	if err != nil {
		t.Fatal(err)
	}
	got := v.(*flare.Shareable).DXO
	if got.Get("w") != w || got.Get("n") != n || got.Get("w2") != w || len(asked) != 3 || asked[2] != (ArrayRef{Item: "T0", FQCN: "site-1.job", RefID: "R-1"}) {
		t.Fatalf("decoded %+v, asked %v", got, asked)
	}

	s.DXO = nil
	b, err = EncodeWith(s, EncodeOptions{ArrayRefs: func([]flare.NamedArray) (string, string, error) {
		t.Fatal("ArrayRefs called for a payload without arrays")
		return "", "", nil
	}})
	if c, err2 := lobs.Decode(b, lobs.V27); err != nil || err2 != nil || len(c.Datums) != 0 {
		t.Fatalf("no arrays: %v %v", err, err2)
	}
	s.DXO = &flare.DXO{Kind: flare.KindWeights, Data: []flare.NamedArray{{Name: "w", Array: w}}}
	if _, err := EncodeWith(s, EncodeOptions{ArrayRefs: func([]flare.NamedArray) (string, string, error) {
		return "", "", errors.New("service closed")
	}}); err == nil || !strings.Contains(err.Error(), "service closed") {
		t.Fatalf("a failed ArrayRefs: %v", err)
	}
}
