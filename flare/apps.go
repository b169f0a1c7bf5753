package flare

import (
	"archive/zip"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxAppBytes and MaxAppFiles bound a deployed app (configs and encrypted
// model code), so that a server can not fill the client's disk or inodes.
const (
	MaxAppBytes = 256 << 20
	MaxAppFiles = 10000
)

// ZipApp packs an app folder (config/, custom/) as NVFlare deploys it.
func ZipApp(dir string) ([]byte, error) { return ZipFolder(dir, "") }

// ZipFolder packs the files under dir with paths relative to it, under
// prefix/ if prefix is set (as NVFlare's console uploads an app).
func ZipFolder(dir, prefix string) ([]byte, error) {
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if prefix != "" {
			rel = filepath.Join(prefix, rel)
		}
		if !d.Type().IsRegular() {
			return fmt.Errorf("%s: not a regular file", p)
		}
		w, err := zw.Create(filepath.ToSlash(rel))
		if err != nil {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(w, f)
		return err
	})
	if err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// maxAppPathBytes and maxAppDepth bound an entry's name and how many
// folders deep it lies; NVFlare's apps are a few levels and short names.
const (
	maxAppPathBytes = 4096
	maxAppDepth     = 64
)

// UnzipApp unpacks a deployed app into dir, which must not exist or be an
// empty folder. Every entry is checked before anything is written: at most
// MaxAppFiles entries declaring at most MaxAppBytes in all; each name a
// relative slash path whose every part passes [CheckPathName] (so no
// absolute path, "..", backslash or control character); regular files and
// folders only (no link, device, pipe or socket); no name twice, and no
// file where another entry needs a folder. A file may not hold more than
// its header declares. The app is unpacked into a new folder beside dir,
// through an [os.Root], and renamed to dir at the end: dir holds all of
// the app or nothing.
func UnzipApp(data []byte, dir string) error {
	zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil && !errors.Is(err, zip.ErrInsecurePath) { // insecure names: refused below, by name
		return fmt.Errorf("deployed app: %w", err)
	}
	files, err := checkAppEntries(zr.File)
	if err != nil {
		return fmt.Errorf("deployed app: %w", err)
	}
	if fi, err := os.Lstat(dir); err == nil {
		names, _ := os.ReadDir(dir)
		if !fi.IsDir() || len(names) > 0 {
			return fmt.Errorf("deployed app: %s is there already and is not an empty folder", dir)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	parent := filepath.Dir(dir)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(parent, ".unzip-")
	if err != nil {
		return err
	}
	if err := writeAppEntries(tmp, files); err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("deployed app: %w", err)
	}
	os.Remove(dir) // an empty folder, checked above
	if err := os.Rename(tmp, dir); err != nil {
		os.RemoveAll(tmp)
		return err
	}
	return nil
}

// CheckZip checks the entries of an app or job zip as UnzipApp does
// before it writes anything, without unpacking it.
func CheckZip(data []byte) error {
	zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil && !errors.Is(err, zip.ErrInsecurePath) {
		return err
	}
	_, err = checkAppEntries(zr.File)
	return err
}

// appEntry is a checked zip entry: its cleaned slash path and whether it
// is a folder.
type appEntry struct {
	f    *zip.File
	name string
	dir  bool
}

// checkAppEntries checks the entries of an app as UnzipApp says.
func checkAppEntries(zf []*zip.File) ([]appEntry, error) {
	if len(zf) > MaxAppFiles {
		return nil, fmt.Errorf("%d entries, more than %d", len(zf), MaxAppFiles)
	}
	out := make([]appEntry, 0, len(zf))
	isDir := make(map[string]bool, len(zf)) // every path an entry makes, file or folder
	var total uint64
	for _, f := range zf {
		if len(f.Name) > maxAppPathBytes {
			return nil, fmt.Errorf("an entry's name is %d bytes long, more than %d", len(f.Name), maxAppPathBytes)
		}
		quoted := strconv.Quote(LogCut(f.Name))
		name := strings.TrimSuffix(f.Name, "/")
		parts := strings.Split(name, "/")
		if len(parts) > maxAppDepth {
			return nil, fmt.Errorf("entry %s is %d folders deep, more than %d", quoted, len(parts), maxAppDepth)
		}
		for _, p := range parts {
			if err := CheckPathName("name part", p); err != nil {
				return nil, fmt.Errorf("entry %s leaves the app folder or is not a plain name: %w", quoted, err)
			}
		}
		mode := f.Mode()
		dir := strings.HasSuffix(f.Name, "/") || mode.IsDir()
		if !dir && !mode.IsRegular() {
			return nil, fmt.Errorf("entry %s is a %s, not a regular file or folder", quoted, modeKind(mode))
		}
		for i := 1; i < len(parts); i++ {
			p := strings.Join(parts[:i], "/")
			if d, seen := isDir[p]; seen && !d {
				return nil, fmt.Errorf("entry %s lies inside the file %s", quoted, strconv.Quote(LogCut(p)))
			}
			isDir[p] = true
		}
		if d, seen := isDir[name]; seen && (!d || !dir) {
			return nil, fmt.Errorf("entry %s is in the app twice, or as a file and a folder", quoted)
		}
		isDir[name] = dir
		if !dir {
			if f.UncompressedSize64 > MaxAppBytes-total {
				return nil, fmt.Errorf("entry %s declares %d bytes: larger than %d bytes in all", quoted, f.UncompressedSize64, MaxAppBytes)
			}
			total += f.UncompressedSize64
		}
		out = append(out, appEntry{f, name, dir})
	}
	return out, nil
}

// modeKind names the kind of a file that is neither regular nor a folder.
func modeKind(m fs.FileMode) string {
	switch {
	case m&fs.ModeSymlink != 0:
		return "symlink"
	case m&fs.ModeCharDevice != 0:
		return "character device"
	case m&fs.ModeDevice != 0:
		return "device"
	case m&fs.ModeNamedPipe != 0:
		return "named pipe"
	case m&fs.ModeSocket != 0:
		return "socket"
	}
	return "special file"
}

// writeAppEntries writes checked entries under the new folder tmp.
func writeAppEntries(tmp string, files []appEntry) error {
	root, err := os.OpenRoot(tmp)
	if err != nil {
		return err
	}
	defer root.Close()
	for _, e := range files {
		name := filepath.FromSlash(e.name)
		if e.dir {
			if err := root.MkdirAll(name, 0o755); err != nil {
				return err
			}
			continue
		}
		if d := filepath.Dir(name); d != "." {
			if err := root.MkdirAll(d, 0o755); err != nil {
				return err
			}
		}
		if err := writeAppFile(root, name, e.f); err != nil {
			return fmt.Errorf("entry %s: %w", strconv.Quote(LogCut(e.f.Name)), err)
		}
	}
	return nil
}

func writeAppFile(root *os.Root, name string, f *zip.File) error {
	rc, err := f.Open()
	if err != nil {
		return err
	}
	defer rc.Close()
	out, err := root.OpenFile(name, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	size := int64(f.UncompressedSize64) // ≤ MaxAppBytes, checked
	n, err := io.Copy(out, io.LimitReader(rc, size+1))
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil && n > size {
		err = fmt.Errorf("holds more than the %d bytes its header declares", size)
	}
	return err
}

// PlaintextCode lists the files under an app's custom/ that are not
// Fernet tokens: model code anyone who sees the app can read.
func PlaintextCode(dir string) []string {
	var plain []string
	filepath.WalkDir(filepath.Join(dir, "custom"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return nil
		}
		head := make([]byte, 6)
		n, _ := io.ReadFull(f, head)
		f.Close()
		if n == 0 || strings.HasPrefix(d.Name(), "__init__") {
			return nil
		}
		if string(head[:n]) != "gAAAAA" {
			rel, _ := filepath.Rel(dir, p)
			plain = append(plain, rel)
		}
		return nil
	})
	return plain
}

// maxNameBytes bounds a name the server sends that becomes part of a path
// or a file (an app name).
const maxNameBytes = 255

// CheckPathName accepts a name that is to be one folder or file name (an
// app, a client's workspace folder): not empty, ".", ".." or longer than
// maxNameBytes, no separators, local by filepath.IsLocal, valid UTF-8
// without control or non-printable characters (a name goes into log lines
// and the clients' fl_app.txt). what names the name in the error.
func CheckPathName(what, name string) error {
	ok := name != "" && len(name) <= maxNameBytes && name != "." && name != ".." &&
		!strings.ContainsAny(name, `/\:`) && filepath.IsLocal(name) && utf8.ValidString(name) &&
		!strings.ContainsFunc(name, func(r rune) bool { return !unicode.IsPrint(r) })
	if !ok {
		if len(name) > 80 {
			return fmt.Errorf("bad %s (%d bytes)", what, len(name))
		}
		return fmt.Errorf("bad %s %s", what, strconv.Quote(LogCut(name)))
	}
	return nil
}
