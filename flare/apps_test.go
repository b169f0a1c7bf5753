package flare_test

import (
	"archive/zip"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/internal/flaretest"
)

// Apps with a link, more entries than MaxAppFiles or an entry declaring
// more than MaxAppBytes are refused before anything is written.
func TestUnzipAppRefusesLinksAndBombs(t *testing.T) {
	var link bytes.Buffer
	zw := zip.NewWriter(&link)
	hdr := &zip.FileHeader{Name: "custom"}
	hdr.SetMode(os.ModeSymlink | 0o777)
	w, _ := zw.CreateHeader(hdr)
	w.Write([]byte("/etc"))
	w, _ = zw.Create("custom/passwd")
	w.Write([]byte("x"))
	zw.Close()

	var many bytes.Buffer
	zw = zip.NewWriter(&many)
	for i := range flare.MaxAppFiles + 1 {
		zw.Create(fmt.Sprintf("f%d", i))
	}
	zw.Close()

	var big bytes.Buffer
	zw = zip.NewWriter(&big)
	w, _ = zw.CreateRaw(&zip.FileHeader{Name: "big", Method: zip.Store, UncompressedSize64: 1 << 63, CompressedSize64: 1})
	w.Write([]byte("x"))
	zw.Close()

	for _, c := range []struct {
		name string
		data []byte
		want string
	}{
		{"symlink", link.Bytes(), "not a regular file"},
		{"many", many.Bytes(), "entries, more than"},
		{"big", big.Bytes(), "larger than"},
	} {
		dir := filepath.Join(t.TempDir(), "app")
		err := flare.UnzipApp(c.data, dir)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v", c.name, err)
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Errorf("%s: wrote %v", c.name, entries)
		}
	}
}

func TestPlaintextCodeIsReported(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "custom"), 0o755)
	os.WriteFile(filepath.Join(dir, "custom", "network.json.enc"), []byte("gAAAAABfake"), 0o644)
	os.WriteFile(filepath.Join(dir, "custom", "__init__.py"), []byte(""), 0o644)
	if got := flare.PlaintextCode(dir); len(got) != 0 {
		t.Fatalf("reported %v", got)
	}
	os.WriteFile(filepath.Join(dir, "custom", "network.py"), []byte("class PneumoniaModel: pass"), 0o644)
	if got := flare.PlaintextCode(dir); len(got) != 1 || got[0] != filepath.Join("custom", "network.py") {
		t.Fatalf("reported %v", got)
	}
}

func TestUnzipAppRefusesEscapes(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "app", "config"), 0o755)
	os.WriteFile(filepath.Join(dir, "app", "config", "x.json"), []byte("{}"), 0o644)
	z, err := flare.ZipApp(filepath.Join(dir, "app"))
	if err != nil {
		t.Fatal(err)
	}
	if err := flare.UnzipApp(z, filepath.Join(dir, "out")); err != nil {
		t.Fatal(err)
	}
	evil := flaretest.ZipOf(t, "../evil.txt", "x")
	if err := flare.UnzipApp(evil, filepath.Join(dir, "out2")); err == nil {
		t.Fatal("an entry outside the app folder was written")
	}
	if _, err := os.Stat(filepath.Join(dir, "evil.txt")); err == nil {
		t.Fatal("evil.txt written")
	}
}

// zipEntry is one entry of a test archive: a header and its content.
type zipEntry struct {
	hdr  zip.FileHeader
	data string
}

func zipOf(t testing.TB, entries ...zipEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		w, err := zw.CreateHeader(&h)
		if err != nil {
			t.Fatal(err)
		}
		w.Write([]byte(e.data))
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func file(name, data string) zipEntry {
	return zipEntry{zip.FileHeader{Name: name, Method: zip.Deflate}, data}
}

func special(name string, mode os.FileMode) zipEntry {
	e := zipEntry{hdr: zip.FileHeader{Name: name}}
	e.hdr.SetMode(mode)
	return e
}

// Every kind of hostile entry is refused by name, and nothing is left
// behind: not the app folder, not the folder it was unpacked into first,
// not the good entries before the bad one.
func TestUnzipAppRefusesHostileEntries(t *testing.T) {
	good := file("config/config_fed_client.json", "{}")
	for _, c := range []struct {
		name    string
		entries []zipEntry
		want    string
	}{
		{"dot-dot", []zipEntry{good, file("../evil.txt", "x")}, `"../evil.txt" leaves the app folder`},
		{"dot-dot inside", []zipEntry{good, file("config/../../evil.txt", "x")}, "leaves the app folder"},
		{"absolute", []zipEntry{good, file("/etc/passwd", "x")}, `"/etc/passwd" leaves the app folder`},
		{"backslash", []zipEntry{good, file(`..\evil.txt`, "x")}, "leaves the app folder"},
		{"drive", []zipEntry{good, file("C:/evil.txt", "x")}, "leaves the app folder"},
		{"empty part", []zipEntry{good, file("config//x", "x")}, "leaves the app folder"},
		{"dot", []zipEntry{good, file("./x", "x")}, "leaves the app folder"},
		{"control character", []zipEntry{good, file("config/x\n.json", "x")}, "not a plain name"},
		{"not UTF-8", []zipEntry{good, file("config/\xff.json", "x")}, "not a plain name"},
		{"symlink", []zipEntry{good, special("custom", os.ModeSymlink|0o777)}, "is a symlink, not a regular file"},
		{"symlink then through it", []zipEntry{special("custom", os.ModeSymlink|0o777), file("custom/passwd", "x")}, "is a symlink"},
		{"device", []zipEntry{good, special("dev", os.ModeDevice|0o600)}, "is a device"},
		{"char device", []zipEntry{good, special("tty", os.ModeDevice|os.ModeCharDevice|0o600)}, "is a character device"},
		{"pipe", []zipEntry{good, special("fifo", os.ModeNamedPipe|0o600)}, "is a named pipe"},
		{"socket", []zipEntry{good, special("sock", os.ModeSocket|0o600)}, "is a socket"},
		{"twice", []zipEntry{good, good}, "in the app twice"},
		{"file and folder", []zipEntry{file("config", "x"), good}, `lies inside the file "config"`},
		{"folder and file", []zipEntry{good, file("config", "x")}, "as a file and a folder"},
		{"deep", []zipEntry{file(strings.Repeat("d/", 64)+"x", "x")}, "folders deep"},
		{"long name", []zipEntry{file(strings.Repeat("n", 5000), "x")}, "bytes long"},
	} {
		dir := filepath.Join(t.TempDir(), "app")
		err := flare.UnzipApp(zipOf(t, c.entries...), dir)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
		if left, _ := os.ReadDir(filepath.Dir(dir)); len(left) != 0 {
			t.Errorf("%s: left %v behind", c.name, left)
		}
	}
}

// The declared sizes are added up before anything is written; a file
// that holds more than its header declares is cut off and refused.
func TestUnzipAppRefusesLyingSizes(t *testing.T) {
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	w, _ := zw.Create("config/ok.json")
	w.Write([]byte("{}"))
	w, _ = zw.CreateRaw(&zip.FileHeader{Name: "liar", Method: zip.Store, UncompressedSize64: 4, CompressedSize64: 1 << 20})
	w.Write(bytes.Repeat([]byte("A"), 1<<20))
	zw.Close()
	dir := filepath.Join(t.TempDir(), "app")
	if err := flare.UnzipApp(buf.Bytes(), dir); err == nil || !strings.Contains(err.Error(), `"liar"`) {
		t.Fatalf("a file larger than its header: %v", err)
	}
	if _, err := os.Stat(dir); err == nil {
		t.Fatal("the app folder was made")
	}

	var two bytes.Buffer
	zw = zip.NewWriter(&two)
	for _, n := range []string{"a", "b"} {
		w, _ := zw.CreateRaw(&zip.FileHeader{Name: n, Method: zip.Store, UncompressedSize64: flare.MaxAppBytes/2 + 1, CompressedSize64: 1})
		w.Write([]byte("x"))
	}
	zw.Close()
	if err := flare.UnzipApp(two.Bytes(), dir); err == nil || !strings.Contains(err.Error(), "in all") {
		t.Fatalf("two halves over the bound: %v", err)
	}
}

// An app unpacks into a folder that is not there or is empty, and no
// other: an earlier app is not mixed with the new one.
func TestUnzipAppWantsAnEmptyFolder(t *testing.T) {
	z := zipOf(t, file("config/", ""), file("config/x.json", "{}"), file("custom/m.py", "pass"))
	dir := t.TempDir() // empty: fine
	if err := flare.UnzipApp(z, dir); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "custom", "m.py")); string(b) != "pass" {
		t.Fatalf("custom/m.py %q", b)
	}
	if err := flare.UnzipApp(z, dir); err == nil || !strings.Contains(err.Error(), "not an empty folder") {
		t.Fatalf("unpacked over an app: %v", err)
	}
	f := filepath.Join(t.TempDir(), "file")
	os.WriteFile(f, nil, 0o644)
	if err := flare.UnzipApp(z, f); err == nil {
		t.Fatal("unpacked over a file")
	}
}

// Whatever the bytes, UnzipApp either refuses them or writes only regular
// files and folders inside the app folder, no more than it may.
func FuzzUnzipApp(f *testing.F) {
	f.Add(zipOf(f, file("config/", ""), file("config/config_fed_client.json", `{"format_version": 2}`), file(".__nvfl_sig.json", "{}")))
	f.Add(zipOf(f, file("../x", "x")))
	f.Add(zipOf(f, special("l", os.ModeSymlink|0o777), file("l/x", "x")))
	f.Add(flaretest.ZipOf(f, "a/b/c", "abc"))
	f.Fuzz(func(t *testing.T, data []byte) {
		base := t.TempDir()
		dir := filepath.Join(base, "app")
		err := flare.UnzipApp(data, dir)
		var total int64
		files := 0
		filepath.WalkDir(base, func(p string, d os.DirEntry, err error) error {
			if err != nil {
				t.Fatal(err)
			}
			if p != base && p != dir && !strings.HasPrefix(p, dir+string(filepath.Separator)) {
				t.Fatalf("wrote %s outside the app folder (err %v)", p, err)
			}
			if !d.IsDir() && !d.Type().IsRegular() {
				t.Fatalf("wrote %s, a %v", p, d.Type())
			}
			if fi, _ := d.Info(); !d.IsDir() && fi != nil {
				total += fi.Size()
				files++
			}
			return nil
		})
		if err != nil && files > 0 {
			t.Fatalf("refused (%v) but left %d files", err, files)
		}
		if total > flare.MaxAppBytes || files > flare.MaxAppFiles {
			t.Fatalf("wrote %d files, %d bytes", files, total)
		}
	})
}
