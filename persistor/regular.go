package persistor

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"
)

// Bounds on the files this package reads whole. A key file is 44 bytes
// and a secret_run_params.json a few hundred; a model is bounded only to
// keep a file that grows while it is read, or one that never ends (as
// some under /proc), from being read without end: 64 GiB is far beyond
// what a net here can hold (its buffers are bounded at 16 GiB).
const (
	maxKeyFileBytes   = 64 << 10
	maxModelFileBytes = 64 << 30
)

// OpenRegular opens path for reading if it is a regular file (or a link to
// one). A named pipe would block a plain open until a writer comes, and a
// device may never end: the file is opened without blocking and its type
// checked on the open file, so nothing can swap it in between. The error
// names the path and what it is instead.
func OpenRegular(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s is not a regular file (%s)", path, describeMode(st.Mode()))
	}
	return f, nil
}

func describeMode(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeDevice != 0:
		return "a device"
	}
	return "mode " + m.Type().String()
}

// ReadRegular returns the content of the regular file path, refusing one
// of more than max bytes; what names the file's role in that error.
func ReadRegular(path string, max int64, what string) ([]byte, error) {
	f, err := OpenRegular(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readOpen(f, path, max, what)
}

// readOpen reads the open regular file f (named path) from its current
// offset to the end, in one allocation of the size fstat reports.
func readOpen(f *os.File, path string, max int64, what string) ([]byte, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size := st.Size()
	if size > max {
		return nil, tooLarge(path, size, max, what)
	}
	// One spare byte sees the end without growing the buffer.
	data := make([]byte, 0, size+1)
	r := capReader{r: f, left: max, err: func() error { return tooLarge(path, -1, max, what) }}
	for {
		if len(data) == cap(data) {
			data = append(data, 0)[:len(data)]
		}
		n, err := r.Read(data[len(data):cap(data)])
		data = data[:len(data)+n]
		if err == io.EOF {
			return data, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

func tooLarge(path string, size, max int64, what string) error {
	if size < 0 {
		return fmt.Errorf("%s: file grew past %d bytes while read, more than %s may be", path, max, what)
	}
	return fmt.Errorf("%s: file of %d bytes is larger than %s may be (at most %d)", path, size, what, max)
}

// capReader passes on at most left bytes of r, and fails with err if r has
// more.
type capReader struct {
	r    io.Reader
	left int64
	err  func() error
}

func (c *capReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if c.left <= 0 {
		var b [1]byte
		n, err := c.r.Read(b[:])
		if n > 0 {
			return 0, c.err()
		}
		return 0, err
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= int64(n)
	return n, err
}
