package tensorboard

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// FilePrefix starts the name of every event file; TensorBoard reads the
// files whose name holds "tfevents".
const FilePrefix = "events.out.tfevents."

// A Writer appends events to one event file. Its methods are safe for
// concurrent use, and a nil *Writer takes everything and writes nothing
// (the caller had no directory to write to).
type Writer struct {
	mu     sync.Mutex
	f      *os.File
	path   string
	err    error // the first write error; nothing is written after it
	closed bool
	// Now is the wall clock of the events (tests set it).
	Now func() time.Time
}

// Create makes dir (0o755) if needed and opens a new event file in it,
// events.out.tfevents.<unix seconds>.<hostname> (a ".N" is added when a
// writer of the same second has the name already), beginning with the
// file_version event.
func Create(dir string) (*Writer, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("tensorboard: %w", err)
	}
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "localhost"
	}
	host = strings.Map(func(r rune) rune {
		if r == '/' || r == '\\' || r < ' ' {
			return '_'
		}
		return r
	}, host)
	base := filepath.Join(dir, FilePrefix+strconv.FormatInt(time.Now().Unix(), 10)+"."+host)
	for i := 0; ; i++ {
		path := base
		if i > 0 {
			path += "." + strconv.Itoa(i)
		}
		w, err := create(path, os.O_EXCL)
		if errors.Is(err, fs.ErrExist) && i < 1000 {
			continue
		}
		return w, err
	}
}

// CreateFile opens the event file path (replacing a file there), beginning
// with the file_version event.
func CreateFile(path string) (*Writer, error) { return create(path, os.O_TRUNC) }

func create(path string, flag int) (*Writer, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|flag, 0o644)
	if err != nil {
		return nil, fmt.Errorf("tensorboard: %w", err)
	}
	w := &Writer{f: f, path: path}
	if err := w.write(Event{FileVersion: FileVersion}); err != nil {
		f.Close()
		os.Remove(path)
		return nil, err
	}
	return w, nil
}

// Path is the event file's path ("" for a nil Writer).
func (w *Writer) Path() string {
	if w == nil {
		return ""
	}
	return w.path
}

// Scalar appends one scalar summary: tag's value at step. It returns the
// write error that stopped the writer, once (later calls are dropped and
// return nil); a NaN or infinite value is written as it is, as TensorBoard
// shows such values.
func (w *Writer) Scalar(tag string, step int64, value float64) error {
	return w.Scalars(step, Value{Tag: tag, Value: float32(value)})
}

// Scalars appends one event holding several scalar values of one step.
func (w *Writer) Scalars(step int64, values ...Value) error {
	if w == nil || len(values) == 0 {
		return nil
	}
	return w.write(Event{Step: step, Values: values})
}

func (w *Writer) write(e Event) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil || w.closed {
		return nil
	}
	now := time.Now
	if w.Now != nil {
		now = w.Now
	}
	e.WallTime = float64(now().UnixNano()) / 1e9
	// One write call per record: a reader never waits on a buffer, and
	// sees at most the last record half written.
	if _, err := w.f.Write(appendRecord(nil, e.Marshal())); err != nil {
		w.err = fmt.Errorf("tensorboard: writing %s: %w (no more training curves are written there)", w.path, err)
		return w.err
	}
	return nil
}

// Err is the write error that stopped the writer, or nil.
func (w *Writer) Err() error {
	if w == nil {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// Close closes the file; later writes are dropped.
func (w *Writer) Close() error {
	if w == nil {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	w.closed = true
	if err := w.f.Close(); err != nil {
		return fmt.Errorf("tensorboard: closing %s: %w", w.path, err)
	}
	return nil
}
