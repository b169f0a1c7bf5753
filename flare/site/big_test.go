package site

import (
	"context"
	"os"
	"runtime/debug"
	"strconv"
	"testing"
	"time"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/cellnet/cell"
	"github.com/flarego/flarego/flare/cellnet/download"
	"github.com/flarego/flarego/flare/cellnet/fobs"
	"github.com/flarego/flarego/flare/cellnet/lobs"
	"github.com/flarego/flarego/flare/cellnet/stream"
	"github.com/flarego/flarego/flare/internal/flaretest"
	"github.com/flarego/flarego/persistor"
)

// A model goes from one cell to another as a task does: a payload with
// its arrays by reference, the arrays pulled from the sender's download
// service over blob streams. Both ends are in this process, so the heap
// holds the sender's model, the receiver's copy and what is in flight
// (chunks, and garbage not yet collected, which the sampler counts too):
// the bound is the receiver's copy and half a model more. FLAREGO_BIG_MB sets the model's size
// (default 256 MiB; 1024 for the 1 GB check).
func TestModelThroughDownloadService(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("moves a large model (not under -short or the race detector)")
	}
	mb := 256
	if v, err := strconv.Atoi(os.Getenv("FLAREGO_BIG_MB")); err == nil && v > 0 {
		mb = v
	}
	const arrayMB = 16
	a, b := cell.Pipe()
	sender, receiver := cell.New(a, "server.job"), cell.New(b, "site-1.job")
	defer sender.Close()
	ss, rs := stream.New(sender, stream.Limits{}), stream.New(receiver, stream.Limits{})
	defer ss.Close()
	defer rs.Close()
	svc := download.NewService("server.job", download.Config{})
	defer svc.Close()
	Serve(ss, svc)

	sh := flare.NewShareable()
	sh.SetHeader(flare.HeaderTaskName, "train")
	dxo := &flare.DXO{Kind: flare.KindWeights}
	for i := 0; i < mb/arrayMB; i++ {
		v := make([]float32, arrayMB<<18)
		for j := range v {
			v[j] = float32(i)
		}
		dxo.Data = append(dxo.Data, flare.NamedArray{Name: "w" + strconv.Itoa(i), Array: persistor.FromFloat32(v, len(v))})
	}
	sh.DXO = dxo
	// The heap sampled is what is live and not yet collected: collect
	// often, so that it is close to what is live.
	defer debug.SetGCPercent(debug.SetGCPercent(10))
	stop := flaretest.HeapPeak() // measured above the live heap (the sender's model)
	start := time.Now()
	payload, err := svc.Encode(sh)
	if err != nil {
		t.Fatal(err)
	}
	c, err := lobs.Decode(payload, lobs.V27)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	v, err := fobs.Decode(c, Downloader(rs)(ctx))
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	peak := stop()
	got := v.(*flare.Shareable)
	if len(got.DXO.Data) != len(dxo.Data) {
		t.Fatalf("%d arrays, want %d", len(got.DXO.Data), len(dxo.Data))
	}
	for i, na := range got.DXO.Data {
		if na.Array.Float64At(na.Array.NumElements()-1) != float64(i) {
			t.Fatalf("array %s: wrong content", na.Name)
		}
	}
	model := uint64(mb) << 20
	extra := peak
	t.Logf("%d MiB model: %.1f s, %.0f MB/s; heap peak %d MiB above the sender's model (%.2f models)",
		mb, took.Seconds(), float64(model)/took.Seconds()/1e6, extra>>20, float64(extra)/float64(model))
	if extra > model+model/2 {
		t.Fatalf("the transfer held %d MiB beyond the sender's model, more than the receiver's copy and a half", extra>>20)
	}
}
