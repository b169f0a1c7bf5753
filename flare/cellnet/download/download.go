// Package download is NVFlare's download service for numpy arrays
// (nvflare.fuel.f3.streaming.download_service with the numpy downloader,
// 2.7.2+), both sides, at the payload level: the messages travel however
// the caller sends them.
//
// A FOBS payload (package fobs) may send its arrays by reference: in the
// body each array is an item id ("T0", "T1", …), and a text datum says
// which cell serves the batch and under which ref id. The receiver pulls
// the batch from that cell on [Channel]/[Topic]: it asks {ref_id}, the
// cell answers {status: "ok", state: {start, count}, data: [chunk, …]},
// the receiver asks again with {ref_id, state} (the state as it came)
// until the answer is {status: "eof"}. Each chunk is a whole .npz of one
// item (member "T0.npy"; numpy before 2.1 adds a member "allow_pickle.npy",
// which is not an item); a reply carries items while they stay under 2
// MiB together, and at least one. A batch the cell does not hold is
// refused with the return code invalid_request, a bad state with
// process_exception.
//
// [Fetcher] downloads: [Fetcher.Options] resolves the references of one
// fobs.Decode, each batch downloaded once. It bounds what a sender may
// make it hold: the arrays, their bytes, the requests.
//
// [Service] serves our own arrays, in the same bytes as NVFlare 2.8.1
// with Debian's numpy: [Service.Encode] writes a payload with its arrays
// by reference and keeps them for [Service.Handle] to answer the
// receiver's requests, until the receiver has had them all,
// [Service.Done], or nobody has asked for them for the timeout.
package download

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/cellnet/fobs"
	"github.com/flarego/flarego/flare/cellnet/lobs"
	"github.com/flarego/flarego/flare/cellnet/msgpk"
	"github.com/flarego/flarego/persistor"
)

// The CellNet channel and topic of download requests. A reply travels on
// return_only, topic Channel:Topic, as every reply to a streamed request.
const (
	Channel = "download_service__"
	Topic   = "download_service__download"
)

// Keys and status values of the requests and replies.
const (
	keyRefID  = "ref_id"
	keyState  = "state"
	keyData   = "data"
	keyStatus = "status"
	keyStart  = "start"
	keyCount  = "count"

	statusOK    = "ok"
	statusEOF   = "eof"
	statusError = "error"
)

// Limits bound one batch's download. A zero field takes its default.
type Limits struct {
	// MaxBytes bounds the .npz bytes received, and apart from them the
	// arrays' bytes (more than the .npz bytes only if compressed).
	MaxBytes int64
	// MaxItems bounds the arrays.
	MaxItems int
	// MaxRequests bounds the requests (a retry of one that timed out is
	// the same request). Default: MaxItems+1, as each reply but the last
	// brings at least one array.
	MaxRequests int
}

// Default limits.
const (
	DefaultMaxBytes = 1 << 30
	DefaultMaxItems = 1 << 16
)

func (l Limits) withDefaults() Limits {
	if l.MaxBytes <= 0 {
		l.MaxBytes = DefaultMaxBytes
	}
	if l.MaxItems <= 0 {
		l.MaxItems = DefaultMaxItems
	}
	if l.MaxRequests <= 0 {
		l.MaxRequests = l.MaxItems + 1
	}
	return l
}

// replySlack is what a reply may hold besides its chunks (status, state,
// msgpack and LOBS headers): a reply longer than the bytes left of the
// limit plus this is refused before it is decoded.
const replySlack = 64 << 10

// maxRequest bounds a request, so that a sender cannot make the
// receiver send large states back (NVFlare's are {start, count}).
const maxRequest = 4 << 10

// Errors a download wraps.
var (
	// ErrLimit: the batch is past the Fetcher's Limits.
	ErrLimit = errors.New("download past its limits")
	// ErrReply: a reply is not what the download service sends.
	ErrReply = errors.New("bad download reply")
)

// A Fetcher downloads batches of arrays from their senders' download
// services.
type Fetcher struct {
	// Request sends payload to the cell fqcn on Channel/Topic and returns
	// the reply's payload; a reply whose return code is not ok (NVFlare's
	// invalid_request for a batch it does not hold) is an error.
	Request func(ctx context.Context, fqcn string, payload []byte) ([]byte, error)
	Limits  Limits
	// RequestTimeout bounds each request; 0 leaves it to ctx. (NVFlare's
	// default is 600 s.)
	RequestTimeout time.Duration
	// Retries is how many times a request that ran past RequestTimeout is
	// sent again, after 2 s, 4 s, … (at most 60 s), as NVFlare does (its
	// default is 3). The sender answers a repeated request the same way.
	Retries int
}

// Options are fobs.Options that resolve a payload's array references
// through f: each batch is downloaded once, when its first array is
// needed, and kept for the other arrays of the same Decode (use new
// Options for each payload).
func (f *Fetcher) Options(ctx context.Context) fobs.Options {
	type key struct{ fqcn, refID string }
	type result struct {
		arrays map[string]*persistor.Tensor
		err    error
	}
	batches := map[key]*result{}
	return fobs.Options{Array: func(r fobs.ArrayRef) (*persistor.Tensor, error) {
		k := key{r.FQCN, r.RefID}
		res := batches[k]
		if res == nil {
			res = &result{}
			res.arrays, res.err = f.Fetch(ctx, r.FQCN, r.RefID)
			batches[k] = res
		}
		if res.err != nil {
			return nil, res.err
		}
		t := res.arrays[r.Item]
		if t == nil {
			return nil, fmt.Errorf("download of batch %s from %s: the payload refers to array %s, which the batch does not hold",
				flare.LogSafe(r.RefID), flare.LogSafe(r.FQCN), flare.LogSafe(r.Item))
		}
		return t, nil
	}}
}

// Fetch downloads batch refID from the cell fqcn and returns its arrays
// by item id.
func (f *Fetcher) Fetch(ctx context.Context, fqcn, refID string) (map[string]*persistor.Tensor, error) {
	arrays, err := f.fetch(ctx, fqcn, refID)
	if err != nil {
		return nil, fmt.Errorf("download of batch %s from %s: %w", flare.LogSafe(refID), flare.LogSafe(fqcn), err)
	}
	return arrays, nil
}

func (f *Fetcher) fetch(ctx context.Context, fqcn, refID string) (map[string]*persistor.Tensor, error) {
	if f.Request == nil {
		return nil, errors.New("nothing to send requests with")
	}
	if refID == "" {
		return nil, errors.New("no ref id")
	}
	lim := f.Limits.withDefaults()
	left := budget{items: lim.MaxItems, bytes: lim.MaxBytes}
	received := int64(0) // .npz bytes
	arrays := map[string]*persistor.Tensor{}
	var state any
	for n := 1; ; n++ {
		if n > lim.MaxRequests {
			return nil, fmt.Errorf("not done after %d requests: %w", lim.MaxRequests, ErrLimit)
		}
		req := msgpk.Map{{Key: keyRefID, Value: refID}}
		if state != nil {
			req = append(req, msgpk.KV{Key: keyState, Value: state})
		}
		payload, err := fobs.Encode(req)
		if err != nil {
			return nil, fmt.Errorf("request %d: %w", n, err)
		}
		if len(payload) > maxRequest {
			return nil, fmt.Errorf("request %d: %w: the state to send back is of %d bytes", n, ErrReply, len(payload))
		}
		reply, err := f.send(ctx, fqcn, payload)
		if err != nil {
			return nil, fmt.Errorf("request %d: %w", n, err)
		}
		if max := lim.MaxBytes - received + replySlack; int64(len(reply)) > max {
			return nil, fmt.Errorf("reply %d: %d bytes, more than the %d left of the limit: %w", n, len(reply), max, ErrLimit)
		}
		m, err := decodeReply(reply)
		if err != nil {
			return nil, fmt.Errorf("reply %d: %w", n, err)
		}
		switch st := m.String(keyStatus); st {
		case statusEOF:
			return arrays, nil
		case statusError:
			return nil, fmt.Errorf("reply %d: the sender failed to produce the batch", n)
		case statusOK:
		default:
			return nil, fmt.Errorf("reply %d: %w: status %s", n, ErrReply, flare.LogSafe(st))
		}
		v, _ := m.Get(keyData)
		chunks, ok := v.([]any)
		if !ok || len(chunks) == 0 {
			return nil, fmt.Errorf("reply %d: %w: status ok without chunks", n, ErrReply)
		}
		if len(chunks) > left.items {
			return nil, fmt.Errorf("reply %d: %d chunks, more than the %d arrays left of the limit: %w", n, len(chunks), left.items, ErrLimit)
		}
		for i, c := range chunks {
			b, ok := c.([]byte)
			if !ok {
				return nil, fmt.Errorf("reply %d: %w: chunk %d is a %T, not bytes", n, ErrReply, i, c)
			}
			if received += int64(len(b)); received > lim.MaxBytes {
				return nil, fmt.Errorf("reply %d: chunks of more than %d bytes: %w", n, lim.MaxBytes, ErrLimit)
			}
			got, err := readNPZ(b, &left)
			if err != nil {
				return nil, fmt.Errorf("reply %d, chunk %d: %w", n, i, err)
			}
			for _, a := range got {
				if arrays[a.Name] != nil {
					return nil, fmt.Errorf("reply %d, chunk %d: %w: array %s a second time", n, i, ErrReply, flare.LogSafe(a.Name))
				}
				arrays[a.Name] = a.Array
			}
		}
		// The receiver sends the state back as it came (NVFlare's item
		// consumer): the sender's own record of what was sent.
		state, _ = m.Get(keyState)
		if _, ok := state.(msgpk.Map); !ok {
			return nil, fmt.Errorf("reply %d: %w: status ok with a state that is not a dict", n, ErrReply)
		}
	}
}

func decodeReply(b []byte) (msgpk.Map, error) {
	c, err := lobs.Decode(b, lobs.V27)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrReply, err)
	}
	v, err := fobs.Decode(c, fobs.Options{})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrReply, err)
	}
	m, ok := v.(msgpk.Map)
	if !ok {
		return nil, fmt.Errorf("%w: a %T, not a dict", ErrReply, v)
	}
	return m, nil
}

// send sends one request, again after a timeout as Retries allows.
func (f *Fetcher) send(ctx context.Context, fqcn string, payload []byte) ([]byte, error) {
	backoff := 2 * time.Second
	for try := 0; ; try++ {
		rctx, cancel := ctx, context.CancelFunc(func() {})
		if f.RequestTimeout > 0 {
			rctx, cancel = context.WithTimeout(ctx, f.RequestTimeout)
		}
		reply, err := f.Request(rctx, fqcn, payload)
		timedOut := err != nil && rctx.Err() != nil && ctx.Err() == nil
		cancel()
		if err == nil || !timedOut || try >= f.Retries {
			if timedOut {
				err = fmt.Errorf("no reply in %v, %d times: %w", f.RequestTimeout, try+1, err)
			}
			return reply, err
		}
		if err := flare.Sleep(ctx, backoff); err != nil {
			return nil, err
		}
		backoff = min(2*backoff, 60*time.Second)
	}
}
