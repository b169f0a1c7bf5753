package tensorboard

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// A Reader reads the events of one event file, record by record.
type Reader struct {
	r    *bufio.Reader
	name string
	off  int64
	size int64 // the file's size, or -1 when unknown
	err  error
}

// NewReader reads events from r; name is what errors call it, size the
// number of bytes r holds (-1 when unknown): a declared record length
// beyond it is refused before anything is read or allocated.
func NewReader(r io.Reader, name string, size int64) *Reader {
	return &Reader{r: bufio.NewReader(r), name: name, size: size}
}

// Offset is where the next record starts.
func (r *Reader) Offset() int64 { return r.off }

// Next returns the next event; io.EOF where the file ends between
// records. Any other error names the file and the record's offset, and
// is returned again by later calls.
func (r *Reader) Next() (Event, error) {
	if r.err != nil {
		return Event{}, r.err
	}
	e, err := r.next()
	if err != nil {
		if err != io.EOF {
			err = fmt.Errorf("%s: record at offset %d: %w", r.name, r.off, err)
		}
		r.err = err
	}
	return e, err
}

// Errors a damaged file's records wrap.
var (
	ErrTruncated = errors.New("truncated")
	ErrChecksum  = errors.New("checksum mismatch")
	ErrTooLong   = errors.New("record too long")
)

func (r *Reader) next() (Event, error) {
	var head [12]byte
	n, err := io.ReadFull(r.r, head[:])
	switch {
	case err == io.EOF:
		return Event{}, io.EOF
	case err == io.ErrUnexpectedEOF:
		return Event{}, fmt.Errorf("%w: %d of the 12 bytes of a record header", ErrTruncated, n)
	case err != nil:
		return Event{}, err
	}
	if got, want := binary.LittleEndian.Uint32(head[8:]), maskedCRC(head[:8]); got != want {
		return Event{}, fmt.Errorf("%w: the length's masked CRC32C is %#08x, the length's bytes give %#08x", ErrChecksum, got, want)
	}
	length := binary.LittleEndian.Uint64(head[:8])
	if length > MaxRecordBytes {
		return Event{}, fmt.Errorf("%w: declared length %d bytes (at most %d)", ErrTooLong, length, MaxRecordBytes)
	}
	if r.size >= 0 {
		if left := r.size - r.off - 12; int64(length)+4 > left {
			return Event{}, fmt.Errorf("%w: declared length %d bytes, %d bytes left in the file", ErrTruncated, length, max(left-4, 0))
		}
	}
	data := make([]byte, length+4)
	if n, err := io.ReadFull(r.r, data); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return Event{}, fmt.Errorf("%w: declared length %d bytes, %d bytes of data and checksum follow", ErrTruncated, length, max(n-4, 0))
		}
		return Event{}, err
	}
	if got, want := binary.LittleEndian.Uint32(data[length:]), maskedCRC(data[:length]); got != want {
		return Event{}, fmt.Errorf("%w: the data's masked CRC32C is %#08x, the data give %#08x", ErrChecksum, got, want)
	}
	e, err := UnmarshalEvent(data[:length])
	if err != nil {
		return Event{}, err
	}
	r.off += 12 + int64(length) + 4
	return e, nil
}

// ReadAll returns the events up to the end, or those before the first
// damaged record and its error.
func (r *Reader) ReadAll() ([]Event, error) {
	var events []Event
	for {
		e, err := r.Next()
		if err == io.EOF {
			return events, nil
		}
		if err != nil {
			return events, err
		}
		events = append(events, e)
	}
}

// ReadFile reads an event file. On a damaged record it returns the events
// before it with the error (a file still being written may end in half a
// record).
func ReadFile(path string) ([]Event, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file", path)
	}
	return NewReader(f, path, st.Size()).ReadAll()
}
