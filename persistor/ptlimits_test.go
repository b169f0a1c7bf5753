package persistor

import (
	"archive/zip"
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/flarego/flarego/persistor/pickle"
)

// Crafted .pt files for the attacks the reader must stop; FuzzDecodePT
// seeds its corpus with them too.

// billionLaughs is a pickle of levels nested 2-tuples, each holding the
// level below twice through the memo: 2^levels strings when walked.
func billionLaughs(levels int) string {
	b := []byte("\x80\x02X\x02\x00\x00\x00haq\x00")
	for i := 1; i <= levels; i++ {
		b = append(b, 'h', byte(i-1), 'h', byte(i-1), 0x86, 'q', byte(i))
	}
	return string(append(b, '.'))
}

// tensorValue is torch's pickle of a float32 tensor over storage key.
func tensorValue(key string, numel, offset int, size, stride pickle.Tuple) any {
	pid := pickle.Tuple{"storage", pickle.Global{Module: "torch", Name: "FloatStorage"}, key, "cpu", numel}
	return &pickle.Reduce{Func: rebuildTensorV2,
		Args: pickle.Tuple{pickle.PersistentID{ID: pid}, offset, size, stride, false, &pickle.OrderedDict{}}}
}

func marshal(t testing.TB, v any) string {
	t.Helper()
	b, err := pickle.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// wrappingStridePT has a view whose last element, (2^24) × 2^40, wraps
// uint64 to 0 and so looked inside its 4-element storage.
func wrappingStridePT(t testing.TB) []byte {
	return zipPT(t, zip.Store, "a/data.pkl", tensorPickle(t, 4, 0, pickle.Tuple{1<<24 + 1}, pickle.Tuple{1 << 40}), "a/data/0", "0123456789abcdef")
}

// expandedPT has a stride-0 view of shape size over a storage of one
// float32: a few hundred bytes standing for 4 × product(size) bytes.
func expandedPT(t testing.TB, size ...any) []byte {
	stride := make(pickle.Tuple, len(size))
	for i := range stride {
		stride[i] = 0
	}
	return zipPT(t, zip.Store, "a/data.pkl", tensorPickle(t, 1, 0, pickle.Tuple(size), stride), "a/data/0", "abcd")
}

// overlappingPT has records a/data/0 and a/data/1 that are the same bytes
// of the zip: its central directory points both at one local header.
func overlappingPT(t testing.TB) []byte {
	sd := &pickle.OrderedDict{Items: []pickle.Item{
		{Key: "w", Value: tensorValue("0", 4, 0, pickle.Tuple{4}, pickle.Tuple{1})},
		{Key: "v", Value: tensorValue("1", 4, 0, pickle.Tuple{4}, pickle.Tuple{1})},
	}}
	data := zipPT(t, zip.Store, "a/data.pkl", marshal(t, sd), "a/data/0", "0123456789abcdef", "a/data/1", "0123456789abcdef")
	// Central directory entries: signature, ..., name length at 28, local
	// header offset at 42, name at 46.
	offsets := map[string]int{}
	for i := bytes.Index(data, []byte("PK\x01\x02")); i >= 0; {
		n := int(binary.LittleEndian.Uint16(data[i+28:]))
		offsets[string(data[i+46:i+46+n])] = i
		j := bytes.Index(data[i+4:], []byte("PK\x01\x02"))
		if j < 0 {
			break
		}
		i += 4 + j
	}
	first := binary.LittleEndian.Uint32(data[offsets["a/data/0"]+42:])
	binary.LittleEndian.PutUint32(data[offsets["a/data/1"]+42:], first)
	return data
}

// rawZip is a zip of one deflated record a/data.pkl whose header declares
// size bytes for the compressed bytes raw.
func rawZip(t testing.TB, raw []byte, size uint64, crc uint32) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	w, err := zw.CreateRaw(&zip.FileHeader{Name: "a/data.pkl", Method: zip.Deflate,
		CompressedSize64: uint64(len(raw)), UncompressedSize64: size, CRC32: crc})
	if err != nil {
		t.Fatal(err)
	}
	w.Write(raw)
	zw.Close()
	return buf.Bytes()
}

// legacyPT is a legacy-format file of one 4-element float32 storage "0"
// whose storage key list is keys.
func legacyPT(t testing.TB, keys ...any) []byte {
	t.Helper()
	b := append(append([]byte{}, legacyMagic...), '.')
	b = append(b, marshal(t, int64(1001))...)
	b = append(b, marshal(t, &pickle.Dict{Items: []pickle.Item{{Key: "protocol_version", Value: int64(1001)}, {Key: "little_endian", Value: true}}})...)
	pid := pickle.Tuple{"storage", pickle.Global{Module: "torch", Name: "FloatStorage"}, "0", "cpu", 4, nil}
	b = append(b, marshal(t, &pickle.OrderedDict{Items: []pickle.Item{{Key: "w", Value: &pickle.Reduce{Func: rebuildTensorV2,
		Args: pickle.Tuple{pickle.PersistentID{ID: pid}, 0, pickle.Tuple{4}, pickle.Tuple{1}, false, &pickle.OrderedDict{}}}}}})...)
	b = append(b, marshal(t, pickle.List(keys))...)
	for range keys {
		b = binary.LittleEndian.AppendUint64(b, 4)
		b = append(b, "0123456789abcdef"...)
	}
	return b
}

// decodeBounded decodes data and fails the test if that took more than a
// second or allocated more than maxAlloc bytes.
func decodeBounded(t *testing.T, data []byte, maxAlloc uint64) (any, error) {
	t.Helper()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	v, err := DecodePT(data)
	d := time.Since(start)
	runtime.ReadMemStats(&after)
	if d > time.Second {
		t.Errorf("took %v", d)
	}
	if a := after.TotalAlloc - before.TotalAlloc; a > maxAlloc {
		t.Errorf("allocated %d bytes for a %d-byte file", a, len(data))
	}
	return v, err
}

func wantErr(t *testing.T, err error, want string) {
	t.Helper()
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("err %v, want one saying %q", err, want)
	}
}

func TestPTBillionLaughsRefused(t *testing.T) {
	data := zipPT(t, zip.Store, "a/data.pkl", billionLaughs(80), "a/version", "3\n")
	_, err := decodeBounded(t, data, 16<<20)
	wantErr(t, err, "walked as a tree")
	wantErr(t, err, "a/data.pkl")
}

func TestPTWrappingStrideRefused(t *testing.T) {
	_, err := decodeBounded(t, wrappingStridePT(t), 16<<20)
	wantErr(t, err, "reaches past its storage")
	// An offset far past the storage, and one that wraps with the stride.
	huge := zipPT(t, zip.Store, "a/data.pkl", tensorPickle(t, 4, 1<<62, pickle.Tuple{2}, pickle.Tuple{1 << 40}), "a/data/0", "0123456789abcdef")
	_, err = DecodePT(huge)
	wantErr(t, err, "reaches past its storage")
	// An empty view's offset is not checked (nor is it by torch), and
	// takes no data.
	empty := zipPT(t, zip.Store, "a/data.pkl", tensorPickle(t, 4, 1<<62, pickle.Tuple{0}, pickle.Tuple{1}), "a/data/0", "0123456789abcdef")
	c, err := DecodeCheckpoint(empty)
	if err != nil {
		t.Fatal(err)
	}
	if w := c.Model.Get("w"); w.NumElements() != 0 || len(w.Data) != 0 {
		t.Errorf("empty view: %v with %d bytes", w, len(w.Data))
	}
}

func TestPTExpandedViewBounded(t *testing.T) {
	// torch keeps an expanded view over its one element; gathering it would
	// turn a few hundred bytes into 2 GiB or 4 TiB.
	for _, size := range [][]any{{1 << 29}, {1 << 20, 1 << 20}} {
		data := expandedPT(t, size...)
		_, err := decodeBounded(t, data, 16<<20)
		wantErr(t, err, "more than this file may make us allocate")
		wantErr(t, err, "stride [0")
	}
	// A small one is gathered.
	c, err := DecodeCheckpoint(expandedPT(t, 4, 4))
	if err != nil {
		t.Fatal(err)
	}
	w := c.Model.Get("w")
	if !bytes.Equal(w.Data, bytes.Repeat([]byte("abcd"), 16)) {
		t.Errorf("expanded 4×4 view: %v %q", w, w.Data)
	}
}

func TestPTZipAmplificationRefused(t *testing.T) {
	// Two records that are one.
	_, err := decodeBounded(t, overlappingPT(t), 16<<20)
	wantErr(t, err, "overlap")

	// A pickle deflated from 32 MiB to some 32 KiB.
	var zbuf bytes.Buffer
	zw := zip.NewWriter(&zbuf)
	w, _ := zw.CreateHeader(&zip.FileHeader{Name: "a/data.pkl", Method: zip.Deflate})
	w.Write([]byte("N."))
	w.Write(make([]byte, 32<<20))
	zw.Close()
	_, err = decodeBounded(t, zbuf.Bytes(), 16<<20)
	wantErr(t, err, "inflating record a/data.pkl would take 33554434 bytes")

	// A header declaring 4 GiB for 4 MiB: refused before anything is
	// allocated for it.
	_, err = decodeBounded(t, rawZip(t, make([]byte, 4<<20), 4<<30, 0), 16<<20)
	wantErr(t, err, "inflating record a/data.pkl would take 4294967296 bytes")

	// A stream shorter than its header says.
	raw := deflate(t, []byte("N."))
	_, err = DecodePT(rawZip(t, raw, 1000, crc32.ChecksumIEEE([]byte("N."))))
	wantErr(t, err, "record a/data.pkl: inflates to fewer bytes than the 1000 its header declares")
}

// deflate returns the raw deflate stream of b, as a zip entry holds it.
func deflate(t testing.TB, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	w, _ := zw.CreateHeader(&zip.FileHeader{Name: "x", Method: zip.Deflate})
	w.Write(b)
	zw.Close()
	zr, _ := zip.NewReader(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
	off, _ := zr.File[0].DataOffset()
	return buf.Bytes()[off : off+int64(zr.File[0].CompressedSize64)]
}

func TestPTMissingMemoIndexRefused(t *testing.T) {
	// {"w": memo[7]}, which nothing stored: Python refuses it; gopickle
	// would read None.
	data := zipPT(t, zip.Store, "a/data.pkl", "\x80\x02}q\x00X\x01\x00\x00\x00wq\x01h\x07s.")
	_, err := DecodePT(data)
	wantErr(t, err, "a/data.pkl: pickle: memo value not found at index 7")
}

func TestPTHugeIntegerRefused(t *testing.T) {
	long4 := append([]byte("\x80\x02\x8b\x00\x00\x10\x00"), bytes.Repeat([]byte{0x5a}, 1<<20)...)
	data := zipPT(t, zip.Store, "a/data.pkl", string(append(long4, '.')))
	_, err := decodeBounded(t, data, 16<<20)
	wantErr(t, err, "integer of 1048576 bytes exceeds the limit")
}

func TestLegacyRepeatedStorageKeyRefused(t *testing.T) {
	c, err := DecodeCheckpoint(legacyPT(t, "0"))
	if err != nil {
		t.Fatalf("the file listing its key once: %v", err)
	}
	if got := c.Model.Get("w").Data; string(got) != "0123456789abcdef" {
		t.Fatalf("w = %q", got)
	}
	_, err = DecodePT(legacyPT(t, "0", "0"))
	wantErr(t, err, "storage 0 is listed twice")
}
