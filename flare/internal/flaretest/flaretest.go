// Package flaretest holds what the tests of flare's packages share: the
// recorded NVFlare fixtures ([Fixture]), an in-memory persistor
// ([MemPersistor]), an executor that adds to the weights ([AddExecutor]), a
// ScatterAndGather server config ([ServerConfig]), a small model
// ([InitModel]), a log that keeps its lines ([Log]), a heap sampler
// ([HeapPeak]), and hostile pickles that stand for the attacks of the
// hardening tests ([BillionLaughs], [BigLong4], [BigDecimalLong],
// [NumpyShapeBomb]), and the real NVFlare 2.8.1 PyTorch server on the
// pneumonia job for the interop tests ([RunPTServer] in the root of
// [Debian13Root], [ComparePTModel]). Only tests import it.
package flaretest

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/persistor"
	"github.com/flarego/flarego/persistor/pickle"
)

// Root is the repository's root folder.
func Root() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..")
}

// Fixture reads testdata/nvflare/PARTS….
func Fixture(t testing.TB, parts ...string) []byte {
	t.Helper()
	b, err := os.ReadFile(FixturePath(parts...))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// FixturePath is the path of testdata/nvflare/PARTS….
func FixturePath(parts ...string) string {
	return filepath.Join(append([]string{Root(), "testdata", "nvflare"}, parts...)...)
}

// MemPersistor keeps the models a server saves; Init is the one it loads.
type MemPersistor struct {
	mu    sync.Mutex
	Init  *persistor.StateDict
	Saved []*persistor.StateDict
}

func (m *MemPersistor) Load() (*persistor.Checkpoint, error) {
	return &persistor.Checkpoint{Model: m.Init}, nil
}

func (m *MemPersistor) Save(c *persistor.Checkpoint) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.Saved = append(m.Saved, c.Model)
	return nil
}

// Registry builds p as the "test.MemPersistor" component of [ServerConfig].
func Registry(p *MemPersistor) *flare.Registry {
	return &flare.Registry{Persistors: map[string]func(json.RawMessage) (flare.ModelPersistor, error){
		"test.MemPersistor": func(json.RawMessage) (flare.ModelPersistor, error) { return p, nil }}}
}

// AddExecutor returns the weights plus Delta, with NUM_STEPS Steps, after Delay.
type AddExecutor struct {
	Delta float32
	Steps int64
	Delay time.Duration
}

func (e AddExecutor) Execute(ctx context.Context, task string, data *flare.Shareable, fl *flare.FLContext) (*flare.Shareable, error) {
	if fl == nil {
		return nil, fmt.Errorf("no FLContext")
	}
	time.Sleep(e.Delay)
	sd := persistor.NewStateDict()
	for _, a := range data.DXO.Data {
		if a.Array.DType != persistor.Float32 {
			sd.Set(a.Name, a.Array)
			continue
		}
		v, _ := a.Array.Float32s()
		w := make([]float32, len(v))
		for i := range v {
			w[i] = v[i] + e.Delta
		}
		sd.Set(a.Name, persistor.FromFloat32(w, a.Array.Shape...))
	}
	out := flare.NewShareable()
	out.DXO = flare.WeightsDXO(sd, &pickle.Dict{Items: []pickle.Item{{Key: flare.MetaNumStepsCurrentRound, Value: e.Steps}}})
	return out, nil
}

// ServerConfig is a ScatterAndGather job over a test.MemPersistor.
func ServerConfig(minClients, rounds int, wait float64) *flare.ServerConfig {
	raw := fmt.Sprintf(`{"format_version": 2, "server": {"heart_beat_timeout": 600},
 "components": [
  {"id": "persistor", "path": "test.MemPersistor", "args": {}},
  {"id": "shareable_generator", "path": %q, "args": {}},
  {"id": "aggregator", "path": %q, "args": {"expected_data_kind": "WEIGHTS"}}],
 "workflows": [{"id": "scatter_and_gather", "path": %q, "args": {"min_clients": %d, "num_rounds": %d, "start_round": 0,
   "wait_time_after_min_received": %g, "train_task_name": "train", "train_timeout": 0}}]}`, flare.PathFullModelGenerator, flare.PathWeightedAggregator, flare.PathScatterAndGather, minClients, rounds, wait)
	var c flare.ServerConfig
	if err := json.Unmarshal([]byte(raw), &c); err != nil {
		panic(err)
	}
	return &c
}

// InitModel is a 2×2 float32 weight and a BatchNorm counter.
func InitModel() *persistor.StateDict {
	sd := persistor.NewStateDict()
	sd.Set("w", persistor.FromFloat32([]float32{1, 2, 3, 4}, 2, 2))
	sd.Set("bn.num_batches_tracked", persistor.FromInt64([]int64{0}))
	return sd
}

// ZipOf is a zip archive of one file.
func ZipOf(t testing.TB, name, content string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	w, _ := zw.Create(name)
	w.Write([]byte(content))
	zw.Close()
	return buf.Bytes()
}

// ShareablePickle is a pickled Shareable whose __headers__ are {"x": value},
// value being raw pickle opcodes.
func ShareablePickle(value []byte) []byte {
	var b bytes.Buffer
	b.WriteString("\x80\x02cnvflare.apis.shareable\nShareable\n)\x81")
	binUnicode(&b, "__headers__")
	b.WriteString("}")
	binUnicode(&b, "x")
	b.Write(value)
	b.WriteString("ss.")
	return b.Bytes()
}

func binUnicode(b *bytes.Buffer, s string) {
	b.WriteByte('X')
	binary.Write(b, binary.LittleEndian, uint32(len(s)))
	b.WriteString(s)
}

// BillionLaughs is a tuple nested levels deep whose two halves are one
// memoised tuple: a few hundred bytes standing for 2^levels leaves.
func BillionLaughs(levels int) []byte {
	var b bytes.Buffer
	b.WriteString(")q\x000") // (), BINPUT 0, POP
	for i := 1; i <= levels; i++ {
		fmt.Fprintf(&b, "h%ch%c\x86q%c0", byte(i-1), byte(i-1), byte(i))
	}
	fmt.Fprintf(&b, "h%c", byte(levels))
	return ShareablePickle(b.Bytes())
}

// BigLong4 is a LONG4 integer of n bytes.
func BigLong4(n int) []byte {
	var b bytes.Buffer
	b.WriteByte(0x8b)
	binary.Write(&b, binary.LittleEndian, uint32(n))
	b.Write(bytes.Repeat([]byte{0x5a}, n))
	return ShareablePickle(b.Bytes())
}

// BigDecimalLong is a LONG of n decimal digits.
func BigDecimalLong(digits int) []byte {
	return ShareablePickle([]byte("L" + strings.Repeat("7", digits) + "L\n"))
}

// NumpyShapeBomb is a WEIGHTS result whose array declares shape
// [2^20, 2^20] float64 (8 TiB) and holds 8 bytes, written by encode (the
// wire's Shareable encoder).
func NumpyShapeBomb(t testing.TB, encode func(*flare.Shareable) ([]byte, error)) []byte {
	sh := flare.NewShareable()
	sh.DXO = &flare.DXO{Kind: flare.KindWeights, Meta: &pickle.Dict{}, Data: []flare.NamedArray{{Name: "w",
		Array: &persistor.Tensor{DType: persistor.Float64, Shape: []int{1 << 20, 1 << 20}, Data: make([]byte, 8)}}}}
	b, err := encode(sh)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// SavedCount is the number of models saved so far.
func (m *MemPersistor) SavedCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.Saved)
}

// Listen listens on a free loopback port.
func Listen(t testing.TB) net.Listener {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return lis
}

// Log records log lines (and passes them to t.Log, cut at 300 bytes).
type Log struct {
	T     testing.TB
	mu    sync.Mutex
	lines []string
}

func (l *Log) Logf(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	l.mu.Lock()
	l.lines = append(l.lines, s)
	l.mu.Unlock()
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	l.T.Log(s)
}

// Lines are the lines logged so far.
func (l *Log) Lines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

// CheckLines fails t if a line is longer than max bytes or holds a newline.
func (l *Log) CheckLines(t testing.TB, max int) {
	t.Helper()
	for _, line := range l.Lines() {
		if len(line) > max || strings.ContainsAny(line, "\n\r") {
			t.Errorf("log line of %d bytes or with a newline: %.200q", len(line), line)
		}
	}
}

// HeapPeak samples HeapInuse until stop is called, which returns how far
// it rose above the live heap when HeapPeak was called: what the code under
// test cost, not the garbage earlier tests left (a collection runs first;
// under -count=20 that garbage once read as 152 MiB).
func HeapPeak() (stop func() uint64) {
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	var peak atomic.Uint64
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
			select {
			case <-done:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	return func() uint64 {
		close(done)
		<-finished
		return peak.Load() - min(peak.Load(), base.HeapInuse)
	}
}

// Count is the number of lines that contain text.
func (l *Log) Count(text string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, s := range l.lines {
		if strings.Contains(s, text) {
			n++
		}
	}
	return n
}

// CapturedFrame is one SFM frame of a real NVFlare CellNet capture
// (testdata/cellnet/*.frames, made by testdata/cellnet/extract.py).
type CapturedFrame struct {
	Conn     int
	ToServer bool
	Data     []byte
}

// CellnetFrames reads testdata/cellnet/NAME.frames.
func CellnetFrames(t testing.TB, name string) []CapturedFrame {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(Root(), "testdata", "cellnet", name+".frames"))
	if err != nil {
		t.Fatal(err)
	}
	var out []CapturedFrame
	for len(b) > 0 {
		if len(b) < 6 {
			t.Fatalf("%s: truncated record", name)
		}
		n := int(binary.BigEndian.Uint32(b[2:]))
		if len(b) < 6+n {
			t.Fatalf("%s: truncated frame", name)
		}
		out = append(out, CapturedFrame{Conn: int(b[0]), ToServer: b[1] == 0, Data: b[6 : 6+n]})
		b = b[6+n:]
	}
	return out
}
