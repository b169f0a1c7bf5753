//go:build interop

package tensorboard

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// The TFRecord framing, written independently in Python (which has no
// CRC32C of its own: the Castagnoli table is built here):
//
//	split FILE DIR  checks both masked CRCs of every record of FILE and
//	                writes each record's data to DIR/NNNN.bin; prints the count
//	frame FILE DATA...  writes the DATA files as the records of FILE
const framingPy = `
import os, struct, sys

TABLE = []
for n in range(256):
    c = n
    for _ in range(8):
        c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    TABLE.append(c)

def crc32c(b):
    c = 0xFFFFFFFF
    for x in b:
        c = TABLE[(c ^ x) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF

def masked(b):
    c = crc32c(b)
    return ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF

assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value

if sys.argv[1] == "split":
    data = open(sys.argv[2], "rb").read()
    off, n = 0, 0
    while off < len(data):
        head = data[off:off + 12]
        if len(head) < 12:
            sys.exit("offset %d: truncated header" % off)
        (length,) = struct.unpack("<Q", head[:8])
        (lcrc,) = struct.unpack("<I", head[8:])
        if lcrc != masked(head[:8]):
            sys.exit("offset %d: length CRC" % off)
        body = data[off + 12:off + 12 + length]
        (dcrc,) = struct.unpack("<I", data[off + 12 + length:off + 16 + length])
        if len(body) != length or dcrc != masked(body):
            sys.exit("offset %d: data CRC" % off)
        open(os.path.join(sys.argv[3], "%04d.bin" % n), "wb").write(body)
        off += 16 + length
        n += 1
    print(n)
elif sys.argv[1] == "frame":
    with open(sys.argv[2], "wb") as out:
        for name in sys.argv[3:]:
            body = open(name, "rb").read()
            head = struct.pack("<Q", len(body))
            out.write(head + struct.pack("<I", masked(head)) + body + struct.pack("<I", masked(body)))
`

// interopTools finds protoc and Python ($PYTHON, default Debian's
// /usr/bin/python3); without them the test is skipped, except on CI
// (CI=true), where it fails.
func interopTools(t *testing.T) (protoc, python string) {
	t.Helper()
	missing := func(what string, err error) {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s: %v (CI=true: the interop test must run; apt-get install protobuf-compiler python3)", what, err)
		}
		t.Skipf("%s: %v (apt-get install protobuf-compiler python3)", what, err)
	}
	protoc, err := exec.LookPath("protoc")
	if err != nil {
		missing("protoc", err)
	}
	python = os.Getenv("PYTHON") // the Makefile's; Debian's by default
	if python == "" {
		python = "/usr/bin/python3"
	}
	if python, err = exec.LookPath(python); err != nil {
		missing("python3", err)
	}
	return protoc, python
}

func runTool(t *testing.T, stdin []byte, name string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return out
}

// textEvent is what protoc's text format says of one Event.
type textEvent struct {
	wallTime    float64
	step        int64
	fileVersion string
	values      []Value
}

// parseText reads the few fields of tb.proto from protoc's text format.
func parseText(t *testing.T, text string) textEvent {
	t.Helper()
	var e textEvent
	for _, line := range strings.Split(text, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ": ")
		if !ok {
			continue
		}
		var err error
		switch k {
		case "wall_time":
			e.wallTime, err = strconv.ParseFloat(v, 64)
		case "step":
			e.step, err = strconv.ParseInt(v, 10, 64)
		case "file_version":
			e.fileVersion, err = strconv.Unquote(v)
		case "tag":
			var tag string
			tag, err = strconv.Unquote(v)
			e.values = append(e.values, Value{Tag: tag})
		case "simple_value":
			var f float64
			f, err = strconv.ParseFloat(v, 32)
			if len(e.values) == 0 {
				t.Fatalf("simple_value before tag in\n%s", text)
			}
			e.values[len(e.values)-1].Value = float32(f)
		default:
			t.Fatalf("unexpected field %s in\n%s", k, text)
		}
		if err != nil {
			t.Fatalf("%s: %v in\n%s", line, err, text)
		}
	}
	return e
}

// Our writer's file, split by the Python framing reader (both CRCs
// checked) and each record decoded by protoc with tb.proto.
func TestInteropProtocDecodes(t *testing.T) {
	protoc, python := interopTools(t)
	dir := t.TempDir()
	w, err := Create(filepath.Join(dir, "site-1"))
	if err != nil {
		t.Fatal(err)
	}
	want := []Event{
		{FileVersion: FileVersion},
		{Step: 1, Values: []Value{{"train/loss", 0.6931}}},
		{Step: 1, Values: []Value{{"train/accuracy", 0.5}}},
		{Step: 2, Values: []Value{{"train/images_per_second", 123.25}}},
		{Step: 1 << 40, Values: []Value{{"cross_site/site-2/site-1", 0.875}, {"cross_site/SRV_FL_global_model.pt/site-1", 1}}},
		{Step: 0, Values: []Value{{"round/contributions", 2}}},
	}
	for _, e := range want[1:] {
		if err := w.Scalars(e.Step, e.Values...); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(dir, "framing.py")
	os.WriteFile(script, []byte(framingPy), 0o644)
	records := filepath.Join(dir, "records")
	os.Mkdir(records, 0o755)
	if n := strings.TrimSpace(string(runTool(t, nil, python, script, "split", w.Path(), records))); n != strconv.Itoa(len(want)) {
		t.Fatalf("the Python framing reader found %s records, want %d", n, len(want))
	}
	for i, we := range want {
		data, err := os.ReadFile(filepath.Join(records, fmt.Sprintf("%04d.bin", i)))
		if err != nil {
			t.Fatal(err)
		}
		text := string(runTool(t, data, protoc, "-I", "testdata", "--decode=tensorboard.Event", "tb.proto"))
		got := parseText(t, text)
		if got.step != we.Step || got.fileVersion != we.FileVersion || fmt.Sprint(got.values) != fmt.Sprint(we.Values) {
			t.Errorf("record %d as protoc decodes it:\n%s\nwant %+v", i, text, we)
		}
		if got.wallTime < 1.6e9 || got.wallTime > 1e10 {
			t.Errorf("record %d: wall_time %v", i, got.wallTime)
		}
	}
}

// Events encoded by protoc from text, framed by the Python writer, read
// by our Reader.
func TestInteropProtocEncodes(t *testing.T) {
	protoc, python := interopTools(t)
	dir := t.TempDir()
	texts := []string{
		`wall_time: 1700000000.25 file_version: "brain.Event:2"`,
		`wall_time: 1700000001.5 step: 3 summary { value { tag: "train/loss" simple_value: 0.125 } }`,
		`wall_time: 1700000002 step: 9007199254740993 summary { value { tag: "a" simple_value: -2.5 } value { tag: "b/c" simple_value: 1e-30 } }`,
		`step: 4 summary { }`,
	}
	want := []Event{
		{WallTime: 1700000000.25, FileVersion: FileVersion},
		{WallTime: 1700000001.5, Step: 3, Values: []Value{{"train/loss", 0.125}}},
		{WallTime: 1700000002, Step: 9007199254740993, Values: []Value{{"a", -2.5}, {"b/c", 1e-30}}},
		{Step: 4},
	}
	args := []string{filepath.Join(dir, "framing.py"), "frame", filepath.Join(dir, "events.out.tfevents.1.python")}
	for i, text := range texts {
		p := filepath.Join(dir, fmt.Sprintf("%d.bin", i))
		os.WriteFile(p, runTool(t, []byte(text), protoc, "-I", "testdata", "--encode=tensorboard.Event", "tb.proto"), 0o644)
		args = append(args, p)
	}
	os.WriteFile(args[0], []byte(framingPy), 0o644)
	runTool(t, nil, python, args...)
	got, err := ReadFile(args[2])
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", want) {
		t.Errorf("read back:\n%+v\nwant\n%+v", got, want)
	}
}
