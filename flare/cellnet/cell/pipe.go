package cell

import (
	"errors"
	"sync"

	"github.com/flarego/flarego/flare/cellnet/sfm"
)

// Pipe returns the two ends of an in-memory link: frames sent on one are
// received, encoded and decoded again, on the other. It joins a server and
// a site in one process (and tests) without a network.
func Pipe() (Link, Link) {
	a, b := make(chan []byte, 16), make(chan []byte, 16)
	done := &closer{ch: make(chan struct{})}
	return &pipe{in: a, out: b, done: done}, &pipe{in: b, out: a, done: done}
}

type closer struct {
	once sync.Once
	ch   chan struct{}
}

type pipe struct {
	in, out chan []byte
	done    *closer
}

var errClosed = errors.New("cellnet pipe closed")

func (p *pipe) Send(f *sfm.Frame) error {
	b, err := f.Encode()
	if err != nil {
		return err
	}
	select {
	case p.out <- b:
		return nil
	case <-p.done.ch:
		return errClosed
	}
}

func (p *pipe) Recv() (*sfm.Frame, error) {
	select {
	case b := <-p.in:
		return sfm.Decode(b)
	case <-p.done.ch:
		return nil, errClosed
	}
}

// Close closes both ends.
func (p *pipe) Close() error {
	p.done.once.Do(func() { close(p.done.ch) })
	return nil
}
