package tensorboard

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// writeSample writes a file with three epochs of two scalars and returns
// its path.
func writeSample(t *testing.T, dir string) string {
	t.Helper()
	w, err := Create(dir)
	if err != nil {
		t.Fatal(err)
	}
	clock := time.Unix(1700000000, 500_000_000)
	w.Now = func() time.Time { clock = clock.Add(time.Second); return clock }
	for step := int64(1); step <= 3; step++ {
		if err := w.Scalar("train/loss", step, 1/float64(step)); err != nil {
			t.Fatal(err)
		}
		if err := w.Scalar("train/accuracy", step, 0.25*float64(step)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return w.Path()
}

func TestWriterReaderRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "runs", "site-1")
	path := writeSample(t, dir)
	if st, err := os.Stat(dir); err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("run directory: %v %v", st, err)
	}
	host, _ := os.Hostname()
	if base := filepath.Base(path); !strings.HasPrefix(base, FilePrefix) || !strings.HasSuffix(base, "."+host) {
		t.Errorf("file name %s", base)
	}
	events, err := ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(events) != 7 || events[0].FileVersion != FileVersion || len(events[0].Values) != 0 {
		t.Fatalf("events: %+v", events)
	}
	if events[0].WallTime < float64(time.Now().Add(-time.Hour).Unix()) {
		t.Errorf("file_version event's wall time %v", events[0].WallTime)
	}
	for i, e := range events[1:] {
		step := int64(i/2 + 1)
		want := Value{"train/loss", float32(1 / float64(step))}
		if i%2 == 1 {
			want = Value{"train/accuracy", float32(0.25 * float64(step))}
		}
		if e.Step != step || len(e.Values) != 1 || e.Values[0] != want || e.WallTime != 1700000000.5+float64(i+1) {
			t.Errorf("event %d: %+v, want step %d %+v", i+1, e, step, want)
		}
	}
	// A second writer of the same second gets its own file.
	w, err := Create(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if w.Path() == path {
		t.Errorf("two writers share %s", path)
	}
}

// Every record reaches the file before Scalar returns: a reader sees the
// curve of a run still going on.
func TestWriterFlushesEachRecord(t *testing.T) {
	w, err := CreateFile(filepath.Join(t.TempDir(), "events.out.tfevents.1.test"))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for step := int64(1); step <= 3; step++ {
		w.Scalar("x", step, float64(step))
		events, err := ReadFile(w.Path())
		if err != nil || len(events) != int(step)+1 || events[step].Values[0].Value != float32(step) {
			t.Fatalf("after step %d: %+v, %v", step, events, err)
		}
	}
}

// A write error is returned once, by the call that met it; the writer then
// drops what it gets, and Err keeps the error.
func TestWriterErrorReportedOnce(t *testing.T) {
	w, err := CreateFile(filepath.Join(t.TempDir(), "events.out.tfevents.1.test"))
	if err != nil {
		t.Fatal(err)
	}
	w.f.Close() // the disk went away
	err = w.Scalar("x", 1, 1)
	if err == nil || !strings.Contains(err.Error(), w.Path()) {
		t.Fatalf("first write after the failure: %v", err)
	}
	if err := w.Scalar("x", 2, 2); err != nil {
		t.Errorf("second write: %v (the error was reported already)", err)
	}
	if w.Err() == nil {
		t.Error("Err forgot the error")
	}
	var nilW *Writer
	if nilW.Scalar("x", 1, 1) != nil || nilW.Close() != nil || nilW.Err() != nil || nilW.Path() != "" {
		t.Error("a nil Writer is not a no-op")
	}
	if _, err := Create(filepath.Join(w.Path(), "sub")); err == nil {
		t.Error("Create under a file succeeded")
	}
}

func TestSpecialValues(t *testing.T) {
	e := Event{Step: -3, Values: []Value{{"nan", float32(math.NaN())}, {"inf", float32(math.Inf(-1))}, {"", 0}}}
	got, err := UnmarshalEvent(e.Marshal())
	if err != nil || got.Step != -3 || len(got.Values) != 3 || !math.IsNaN(float64(got.Values[0].Value)) ||
		!math.IsInf(float64(got.Values[1].Value), -1) || got.Values[2] != (Value{}) {
		t.Errorf("%+v %v", got, err)
	}
}

// Damaged files are errors that name the file, the record's offset and
// what is wrong; the events before the damage are kept.
func TestReadDamaged(t *testing.T) {
	good, err := os.ReadFile(writeSample(t, t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	offs := recordOffsets(good)
	first, last := offs[1], offs[len(offs)-1] // after the file_version record; the last one
	header := func(length uint64) []byte {
		var b [12]byte
		binary.LittleEndian.PutUint64(b[:], length)
		binary.LittleEndian.PutUint32(b[8:], maskedCRC(b[:8]))
		return b[:]
	}
	flip := func(i int) []byte {
		b := bytes.Clone(good)
		b[i] ^= 0x40
		return b
	}
	cases := []struct {
		name   string
		data   []byte
		is     error
		says   string
		offset int
		events int
	}{
		{"length CRC", flip(first + 9), ErrChecksum, "length's masked CRC32C", first, 1},
		{"data CRC", flip(first + 14), ErrChecksum, "data's masked CRC32C", first, 1},
		{"truncated header", good[:first+5], ErrTruncated, "5 of the 12 bytes", first, 1},
		{"truncated data", good[:len(good)-3], ErrTruncated, "left in the file", last, 6},
		{"length beyond the file", append(bytes.Clone(good[:first]), header(1000)...), ErrTruncated, "declared length 1000 bytes, 0 bytes left", first, 1},
		{"huge length", append(bytes.Clone(good[:first]), header(1<<62)...), ErrTooLong, "declared length 4611686018427387904", first, 1},
		{"over the bound", append(header(MaxRecordBytes+1), make([]byte, 100)...), ErrTooLong, "at most 16777216", 0, 0},
		{"not protobuf", appendRecord(bytes.Clone(good), []byte{0x0a, 0x05, 'x'}), errMalformed, "malformed protobuf", len(good), 7},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "events.out.tfevents.1.damaged")
			os.WriteFile(path, c.data, 0o644)
			events, err := ReadFile(path)
			if !errors.Is(err, c.is) || !strings.Contains(err.Error(), c.says) || !strings.Contains(err.Error(), path) {
				t.Fatalf("error %v, want %v saying %q and naming the file", err, c.is, c.says)
			}
			if !strings.Contains(err.Error(), "offset "+strconv.Itoa(c.offset)+":") {
				t.Errorf("error %v does not name offset %d", err, c.offset)
			}
			if len(events) != c.events {
				t.Errorf("%d events kept, want %d", len(events), c.events)
			}
		})
	}
	// Without a known size, a record cut short is still an error, not EOF.
	r := NewReader(bytes.NewReader(good[:len(good)-3]), "stream", -1)
	events, err := r.ReadAll()
	if !errors.Is(err, ErrTruncated) || len(events) != 6 {
		t.Errorf("stream: %d events, %v", len(events), err)
	}
	if _, again := r.Next(); again == nil || again.Error() != err.Error() {
		t.Errorf("Next after an error: %v", again)
	}
	if events, err := NewReader(bytes.NewReader(nil), "empty", 0).ReadAll(); err != nil || len(events) != 0 {
		t.Errorf("empty file: %v %v", events, err)
	}
	if _, err := ReadFile(t.TempDir()); err == nil {
		t.Error("a directory read as an event file")
	}
}

// recordOffsets is where each record of a well-formed file starts.
func recordOffsets(b []byte) []int {
	var offs []int
	for off := 0; off < len(b); off += 12 + int(binary.LittleEndian.Uint64(b[off:])) + 4 {
		offs = append(offs, off)
	}
	return offs
}

// FuzzRead: no input makes the reader panic, allocate past the bound, or
// return events that do not survive being written again.
func FuzzRead(f *testing.F) {
	var b []byte
	b = appendRecord(b, Event{FileVersion: FileVersion, WallTime: 1}.Marshal())
	b = appendRecord(b, Event{Step: 7, WallTime: 2, Values: []Value{{"train/loss", 0.5}}}.Marshal())
	f.Add(b)
	f.Add(b[:len(b)-1])
	f.Add([]byte{})
	f.Add(appendRecord(nil, []byte{0x2a, 0x03, 0x0a, 0x01, 0x0a}))
	f.Fuzz(func(t *testing.T, data []byte) {
		// The bytes as one record's data: the protobuf decoder alone (the
		// checksums keep the fuzzer from reaching it through the framing).
		if e, err := UnmarshalEvent(data); err == nil {
			if back, err := UnmarshalEvent(e.Marshal()); err != nil || !sameEvent(back, e) {
				t.Fatalf("event %+v written again: %+v, %v", e, back, err)
			}
		} else if !errors.Is(err, errMalformed) {
			t.Fatalf("decoding error %v", err)
		}
		for _, size := range []int64{int64(len(data)), -1} {
			events, err := NewReader(bytes.NewReader(data), "fuzz", size).ReadAll()
			if err != nil && (err == io.EOF || !strings.HasPrefix(err.Error(), "fuzz: record at offset ")) {
				t.Fatalf("error %q does not name the file and offset", err)
			}
			var again []byte
			for _, e := range events {
				again = appendRecord(again, e.Marshal())
			}
			back, err := NewReader(bytes.NewReader(again), "again", int64(len(again))).ReadAll()
			if err != nil || len(back) != len(events) {
				t.Fatalf("events written again: %d of %d, %v", len(back), len(events), err)
			}
			for i := range back {
				if !sameEvent(back[i], events[i]) {
					t.Fatalf("event %d: %+v, then %+v", i, events[i], back[i])
				}
			}
		}
	})
}

func sameEvent(a, b Event) bool {
	if math.Float64bits(a.WallTime) != math.Float64bits(b.WallTime) && !(a.WallTime == 0 && b.WallTime == 0) ||
		a.Step != b.Step || a.FileVersion != b.FileVersion || len(a.Values) != len(b.Values) {
		return false
	}
	for i := range a.Values {
		if a.Values[i].Tag != b.Values[i].Tag || math.Float32bits(a.Values[i].Value) != math.Float32bits(b.Values[i].Value) {
			return false
		}
	}
	return true
}
