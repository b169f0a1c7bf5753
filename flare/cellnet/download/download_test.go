package download

import (
	"archive/zip"
	"bytes"
	"compress/flate"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"reflect"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/cellnet/fobs"
	"github.com/flarego/flarego/flare/cellnet/internal/capture"
	"github.com/flarego/flarego/flare/cellnet/lobs"
	"github.com/flarego/flarego/flare/cellnet/msgpk"
	"github.com/flarego/flarego/flare/npy"
	"github.com/flarego/flarego/persistor"
)

// captured are the download requests and replies of the NVFlare 2.8.1
// capture, in order.
func captured(t *testing.T) (reqs, replies [][]byte) {
	for _, p := range capture.Payloads(t, "nvflare-2.8.1") {
		switch {
		case p.Channel == Channel && p.Topic == Topic:
			reqs = append(reqs, p.Data)
		case p.Channel == "return_only" && p.Topic == Channel+":"+Topic:
			replies = append(replies, p.Data)
		}
	}
	if len(reqs) != 24 || len(replies) != 24 {
		t.Fatalf("%d download requests and %d replies in the capture, want 24 and 24", len(reqs), len(replies))
	}
	return reqs, replies
}

func request(t testing.TB, ref string, state msgpk.Map) []byte {
	m := msgpk.Map{{Key: keyRefID, Value: ref}}
	if state != nil {
		m = append(m, msgpk.KV{Key: keyState, Value: state})
	}
	b, err := fobs.Encode(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func state(start, count int) msgpk.Map {
	return msgpk.Map{{Key: keyStart, Value: int64(start)}, {Key: keyCount, Value: int64(count)}}
}

// Every captured request is {ref_id} or {ref_id, state: {start: 0,
// count: 1}}; every reply {status: ok, state, data: [one .npz]} or
// {status: eof}. Our Service, given the arrays of a captured reply,
// answers the same requests with the same bytes; our Fetcher sends the
// same requests and reads the captured replies.
func TestCapturedExchanges(t *testing.T) {
	reqs, replies := captured(t)
	var refs []string
	for i, r := range reqs {
		c, err := lobs.Decode(r, lobs.V27)
		if err != nil {
			t.Fatal(err)
		}
		v, err := fobs.Decode(c, fobs.Options{})
		if err != nil {
			t.Fatal(err)
		}
		m := v.(msgpk.Map)
		ref := m.String(keyRefID)
		var want []byte
		if st, ok := m.Get(keyState); ok {
			want = request(t, ref, st.(msgpk.Map))
			if !reflect.DeepEqual(st, state(0, 1)) {
				t.Errorf("request %d: state %v", i, st)
			}
		} else {
			want = request(t, ref, nil)
			refs = append(refs, ref)
		}
		if !bytes.Equal(r, want) {
			t.Errorf("request %d: captured %x, we write %x", i, r, want)
		}
	}
	var ok, eof [][]byte
	for i, r := range replies {
		m, err := decodeReply(r)
		if err != nil {
			t.Fatalf("reply %d: %v", i, err)
		}
		switch m.String(keyStatus) {
		case statusOK:
			ok = append(ok, r)
		case statusEOF:
			eof = append(eof, r)
			if len(m) != 1 {
				t.Errorf("reply %d: eof with %v", i, m)
			}
		default:
			t.Fatalf("reply %d: %v", i, m)
		}
	}
	if len(refs) != 12 || len(ok) != 12 || len(eof) != 12 {
		t.Fatalf("%d batches, %d ok and %d eof replies", len(refs), len(ok), len(eof))
	}

	for i, r := range ok {
		// What NVFlare served, through our Fetcher.
		var sent [][]byte
		f := &Fetcher{Request: func(_ context.Context, fqcn string, p []byte) ([]byte, error) {
			sent = append(sent, p)
			if len(sent) == 1 {
				return r, nil
			}
			return eof[i], nil
		}}
		arrays, err := f.Fetch(context.Background(), "server.job", refs[i])
		if err != nil {
			t.Fatal(err)
		}
		if len(sent) != 2 || !bytes.Equal(sent[0], request(t, refs[i], nil)) || !bytes.Equal(sent[1], request(t, refs[i], state(0, 1))) {
			t.Fatalf("batch %d: requests %x", i, sent)
		}
		w := arrays["T0"]
		if len(arrays) != 1 || w == nil || w.DType != persistor.Float32 || !reflect.DeepEqual(w.Shape, []int{3, 3}) {
			t.Fatalf("batch %d: arrays %v", i, arrays)
		}

		// The same arrays, through our Service.
		s := NewService("site-1.job", Config{})
		ref, err := s.Add([]flare.NamedArray{{Name: "T0", Array: w}})
		if err != nil {
			t.Fatal(err)
		}
		got, err := s.Handle("server.job", request(t, ref, nil))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, r) {
			t.Errorf("batch %d: NVFlare's reply\n%x\nours\n%x", i, r, got)
		}
		got, err = s.Handle("server.job", request(t, ref, state(0, 1)))
		if err != nil || !bytes.Equal(got, eof[i]) {
			t.Errorf("batch %d: NVFlare's eof %x, ours %x %v", i, eof[i], got, err)
		}
		if s.Len() != 0 {
			t.Errorf("batch %d still held after its receiver had it all", i)
		}
	}
}

// The hand-written reply is what msgpk and lobs write for the same value.
func TestOKReplyEncoding(t *testing.T) {
	for _, n := range []int{1, 15, 16, 300} {
		var items []member
		var want []any
		for i := range n {
			size := []int{1, 60, 300}[i%3]
			if i == 1 {
				size = 70000 // a bin32
			}
			m, err := newMember(fmt.Sprintf("T%d", i), persistor.FromFloat32(make([]float32, size), size))
			if err != nil {
				t.Fatal(err)
			}
			items = append(items, m)
			want = append(want, appendNPZ(nil, []member{allowPickleMember, m}))
		}
		for _, start := range []int{0, 127, 128, 255, 256, 65535, 65536, 1 << 32} {
			body, err := msgpk.Marshal(msgpk.Map{{Key: "status", Value: "ok"}, {Key: "state", Value: state(start, n)}, {Key: "data", Value: want}})
			if err != nil {
				t.Fatal(err)
			}
			if got := okReply(start, items); !bytes.Equal(got, (&lobs.Container{Main: body}).Encode(lobs.V27)) {
				t.Fatalf("%d items from %d: the reply differs from msgpk's", n, start)
			}
		}
	}
}

// handler sends requests to s as requester, as a transport would.
func handler(s *Service, requester string, count *int) func(context.Context, string, []byte) ([]byte, error) {
	return func(_ context.Context, fqcn string, p []byte) ([]byte, error) {
		if fqcn != s.FQCN() {
			return nil, fmt.Errorf("no cell %s", fqcn)
		}
		if count != nil {
			*count++
		}
		return s.Handle(requester, p)
	}
}

func testArrays() []flare.NamedArray {
	f := make([]float32, 100000)
	for i := range f {
		f[i] = float32(i)
	}
	return []flare.NamedArray{
		{Name: "T0", Array: persistor.FromFloat32(f, 100, 1000)},
		{Name: "T1", Array: persistor.FromFloat32([]float32{1, 2, 3}, 3)},
		{Name: "T2", Array: &persistor.Tensor{DType: persistor.Int64, Shape: []int{2}, Data: []byte{7, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}}},
		{Name: "T3", Array: &persistor.Tensor{DType: persistor.Uint8, Shape: []int{}, Data: []byte{9}}},
		{Name: "T4", Array: persistor.FromFloat32(f[:5000], 5000)},
	}
}

// Fetcher and Service agree: arrays come back as they were, chunked as
// NVFlare chunks (items while under the chunk size, the first always).
func TestRoundTrip(t *testing.T) {
	var done []string
	s := NewService("site-1.job", Config{ChunkSize: 1100, OnDone: func(ref, status string) { done = append(done, status) }})
	arrays := testArrays()
	ref, err := s.Add(arrays)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	f := &Fetcher{Request: handler(s, "server.job", &n)}
	got, err := f.Fetch(context.Background(), "site-1.job", ref)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range arrays {
		if !reflect.DeepEqual(got[a.Name], a.Array) {
			t.Errorf("%s: got %v, want %v", a.Name, got[a.Name], a.Array)
		}
	}
	// T0 alone (over the chunk size), T1+T2 (each about 400 bytes), T3,
	// T4 alone, then eof.
	if len(got) != len(arrays) || n != 5 {
		t.Errorf("%d arrays in %d requests", len(got), n)
	}
	if s.Len() != 0 || !reflect.DeepEqual(done, []string{DoneFinished}) {
		t.Errorf("after the download: %d batches, done %v", s.Len(), done)
	}
	// Asked again (its last reply lost), the receiver is told eof; anyone
	// else is refused as NVFlare refuses an unknown ref.
	if b, err := s.Handle("server.job", request(t, ref, state(4, 1))); err != nil || !bytes.Equal(b, eofReply()) {
		t.Errorf("the receiver again: %x %v", b, err)
	}
	var re *RequestError
	if _, err := s.Handle("site-2.job", request(t, ref, nil)); !errors.As(err, &re) || re.Code != CodeInvalidRequest {
		t.Errorf("another receiver: %v", err)
	}
}

// A payload encoded by a Service decodes through a Fetcher, its batch
// downloaded once for all its arrays.
func TestPayloadByReference(t *testing.T) {
	s := NewService("site-1.job", Config{})
	sh := flare.NewShareable()
	sh.SetHeader(flare.HeaderTaskName, "train")
	sh.DXO = &flare.DXO{Kind: flare.KindWeights, Data: testArrays()}
	p, err := s.Encode(sh)
	if err != nil {
		t.Fatal(err)
	}
	if s.Len() != 1 {
		t.Fatalf("%d batches served", s.Len())
	}
	c, err := lobs.Decode(p, lobs.V27)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Datums) != 1 || c.Datums[0].Type != 3 || !strings.HasPrefix(string(c.Datums[0].Value), `{"fqcn": "site-1.job", "ref_id": "`) {
		t.Fatalf("datums %+v", c.Datums)
	}
	if bytes.Contains(p, testArrays()[1].Array.Data) {
		t.Error("the payload carries an array's bytes")
	}
	n := 0
	f := &Fetcher{Request: handler(s, "server.job", &n)}
	v, err := fobs.Decode(c, f.Options(context.Background()))
	if err != nil {
		t.Fatal(err)
	}
	got := v.(*flare.Shareable)
	for _, a := range testArrays() {
		if !reflect.DeepEqual(got.DXO.Get(a.Name), a.Array) {
			t.Errorf("%s differs", a.Name)
		}
	}
	if n != 2 {
		t.Errorf("%d requests for one batch", n)
	}

	// A payload that refers to an item its batch lacks.
	p2, err := fobs.EncodeWith(sh, fobs.EncodeOptions{ArrayRefs: func(items []flare.NamedArray) (string, string, error) {
		ref, err := s.Add(items[1:])
		return s.FQCN(), ref, err
	}})
	if err != nil {
		t.Fatal(err)
	}
	c, _ = lobs.Decode(p2, lobs.V27)
	if _, err := fobs.Decode(c, f.Options(context.Background())); err == nil || !strings.Contains(err.Error(), "does not hold") {
		t.Errorf("a missing item: %v", err)
	}
}

// A batch is let go when nobody asks for it for the timeout (each request
// starts it anew), on Done, on Close; a finished batch is remembered for
// its receivers for 30 minutes; with Receivers 2, it waits for two.
func TestServiceLifetime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		var done []string
		s := NewService("site-1.job", Config{Timeout: time.Minute, ChunkSize: 1, Receivers: 2, OnDone: func(ref, status string) {
			mu.Lock()
			defer mu.Unlock()
			done = append(done, status)
		}})
		arrays := testArrays()
		ref, _ := s.Add(arrays)
		idle, _ := s.Add(arrays)
		for i := range 3 {
			time.Sleep(50 * time.Second)
			if _, err := s.Handle("a", request(t, ref, state(i, min(i, 1)))); err != nil {
				t.Fatal(err)
			}
		}
		synctest.Wait()
		if s.Len() != 1 {
			t.Fatalf("%d batches after 150 s, want the active one", s.Len())
		}
		if _, err := s.Handle("a", request(t, idle, nil)); err == nil {
			t.Fatal("an expired batch was served")
		}
		// Receiver a has it all; b not yet.
		if b, err := s.Handle("a", request(t, ref, state(4, 1))); err != nil || !bytes.Equal(b, eofReply()) {
			t.Fatalf("eof for a: %v", err)
		}
		if s.Len() != 1 {
			t.Fatal("let go before its second receiver")
		}
		if b, err := s.Handle("b", request(t, ref, state(2, 3))); err != nil || !bytes.Equal(b, eofReply()) {
			t.Fatalf("eof for b: %v", err)
		}
		if s.Len() != 0 {
			t.Fatal("held after both receivers")
		}
		time.Sleep(29 * time.Minute)
		if _, err := s.Handle("b", request(t, ref, state(4, 1))); err != nil {
			t.Fatalf("b again within 30 minutes: %v", err)
		}
		time.Sleep(2 * time.Minute)
		if _, err := s.Handle("b", request(t, ref, state(4, 1))); err == nil {
			t.Fatal("a finished batch remembered past 30 minutes")
		}

		gone, _ := s.Add(arrays)
		s.Done(gone)
		if _, err := s.Handle("a", request(t, gone, nil)); err == nil {
			t.Fatal("served after Done")
		}
		s.Add(arrays)
		s.Close()
		if _, err := s.Add(arrays); err == nil || s.Len() != 0 {
			t.Fatal("Add after Close")
		}
		synctest.Wait()
		mu.Lock()
		defer mu.Unlock()
		if want := []string{DoneTimeout, DoneFinished, DoneDeleted, DoneDeleted}; !reflect.DeepEqual(done, want) {
			t.Errorf("done %v, want %v", done, want)
		}
	})
}

// Requests NVFlare's service refuses, ours refuses with the same code;
// arrays it cannot serve, Add refuses.
func TestServiceRefusals(t *testing.T) {
	s := NewService("site-1.job", Config{})
	ref, err := s.Add(testArrays())
	if err != nil {
		t.Fatal(err)
	}
	bad := func(v any) []byte {
		b, err := fobs.Encode(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for name, c := range map[string]struct {
		p    []byte
		code string
	}{
		"not FOBS":       {[]byte("hello"), CodeInvalidRequest},
		"no ref_id":      {bad(msgpk.Map{{Key: "state", Value: state(0, 1)}}), CodeInvalidRequest},
		"not a dict":     {bad([]any{"ref_id", ref}), CodeInvalidRequest},
		"unknown ref":    {request(t, "R-none", nil), CodeInvalidRequest},
		"empty":          {nil, CodeInvalidRequest},
		"state not dict": {bad(msgpk.Map{{Key: "ref_id", Value: ref}, {Key: "state", Value: "x"}}), CodeProcessException},
		"state past end": {request(t, ref, state(3, 3)), CodeProcessException},
		"negative start": {request(t, ref, state(-1, 1)), CodeProcessException},
		"string count":   {bad(msgpk.Map{{Key: "ref_id", Value: ref}, {Key: "state", Value: msgpk.Map{{Key: "count", Value: "1"}}}}), CodeProcessException},
	} {
		_, err := s.Handle("server", c.p)
		var re *RequestError
		if !errors.As(err, &re) || re.Code != c.code {
			t.Errorf("%s: %v, want %s", name, err, c.code)
		}
	}
	for name, arrays := range map[string][]flare.NamedArray{
		"nil":          {{Name: "T0"}},
		"twice":        {{Name: "T0", Array: testArrays()[1].Array}, {Name: "T0", Array: testArrays()[1].Array}},
		"no name":      {{Array: testArrays()[1].Array}},
		"allow_pickle": {{Name: "allow_pickle", Array: testArrays()[1].Array}},
		"bfloat16":     {{Name: "T0", Array: &persistor.Tensor{DType: persistor.BFloat16, Shape: []int{1}, Data: []byte{0, 0}}}},
	} {
		if _, err := s.Add(arrays); err == nil {
			t.Errorf("%s: added", name)
		}
	}
}

// reply builds an ok reply of chunks as NVFlare would send it.
func reply(t testing.TB, start int, chunks ...[]byte) []byte {
	data := make([]any, len(chunks))
	for i, c := range chunks {
		data[i] = c
	}
	b, err := fobs.Encode(msgpk.Map{{Key: "status", Value: "ok"}, {Key: "state", Value: state(start, len(chunks))}, {Key: "data", Value: data}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func npzOf(t testing.TB, name string, a *persistor.Tensor) []byte {
	m, err := newMember(name, a)
	if err != nil {
		t.Fatal(err)
	}
	return appendNPZ(nil, []member{allowPickleMember, m})
}

// rawZip is a zip of one member whose header says what h says, whatever
// data are.
func rawZip(t testing.TB, h *zip.FileHeader, data []byte) []byte {
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	w, err := zw.CreateRaw(h)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(data)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// deflated is a zip of member T0.npy, data deflated, whose header
// declares crc and size.
func deflated(t testing.TB, crc uint32, size uint64, data []byte) []byte {
	var buf bytes.Buffer
	w, _ := flate.NewWriter(&buf, flate.BestCompression)
	w.Write(data)
	w.Close()
	return rawZip(t, &zip.FileHeader{Name: "T0.npy", Method: zip.Deflate, CRC32: crc, CompressedSize64: uint64(buf.Len()), UncompressedSize64: size}, buf.Bytes())
}

// Whatever a sender sends, the Fetcher holds no more than its limits and
// says which batch went wrong, and how.
func TestFetcherRefusals(t *testing.T) {
	small := persistor.FromFloat32([]float32{1, 2}, 2)
	smallNPY, _ := npy.Encode(small)
	bombNPY := append(smallNPY[:len(smallNPY)-8:len(smallNPY)-8], make([]byte, 10<<20)...)
	eof := eofReply()
	for name, c := range map[string]struct {
		replies [][]byte
		limits  Limits
		want    string
		limit   bool
	}{
		"not FOBS":       {replies: [][]byte{[]byte("nope")}, want: "bad download reply"},
		"bad status":     {replies: [][]byte{bad(t, msgpk.Map{{Key: "status", Value: "maybe"}})}, want: "status maybe"},
		"sender error":   {replies: [][]byte{bad(t, msgpk.Map{{Key: "status", Value: "error"}})}, want: "failed to produce"},
		"no chunks":      {replies: [][]byte{reply(t, 0)}, want: "without chunks"},
		"chunk not bin":  {replies: [][]byte{bad(t, msgpk.Map{{Key: "status", Value: "ok"}, {Key: "state", Value: state(0, 1)}, {Key: "data", Value: []any{"x"}}})}, want: "not bytes"},
		"state not dict": {replies: [][]byte{bad(t, msgpk.Map{{Key: "status", Value: "ok"}, {Key: "data", Value: []any{npzOf(t, "T0", small)}}})}, want: "state that is not a dict"},
		"not a zip":      {replies: [][]byte{reply(t, 0, []byte("PK\x03\x04 not really"))}, want: "bad .npz"},
		"not an npy":     {replies: [][]byte{reply(t, 0, rawZip(t, &zip.FileHeader{Name: "T0.txt", CRC32: crc32.ChecksumIEEE(smallNPY), CompressedSize64: uint64(len(smallNPY)), UncompressedSize64: uint64(len(smallNPY))}, smallNPY))}, want: "not an .npy"},
		"bad checksum":   {replies: [][]byte{reply(t, 0, rawZip(t, &zip.FileHeader{Name: "T0.npy", CRC32: 1, CompressedSize64: uint64(len(smallNPY)), UncompressedSize64: uint64(len(smallNPY))}, smallNPY))}, want: "checksum"},
		"bad npy":        {replies: [][]byte{reply(t, 0, rawZip(t, &zip.FileHeader{Name: "T0.npy", CRC32: crc32.ChecksumIEEE([]byte("npy?")), CompressedSize64: 4, UncompressedSize64: 4}, []byte("npy?")))}, want: "bad .npy"},
		"twice": {replies: [][]byte{reply(t, 0, npzOf(t, "T0", small)), reply(t, 1, npzOf(t, "T0", small))},
			want: "array T0 a second time"},
		"huge declared": {replies: [][]byte{reply(t, 0, rawZip(t, &zip.FileHeader{Name: "T0.npy", CRC32: 1, CompressedSize64: 1 << 40, UncompressedSize64: 1 << 40}, smallNPY))},
			want: "declares 1099511627776 bytes", limit: true},
		"zip bomb": {replies: [][]byte{reply(t, 0, deflated(t, crc32.ChecksumIEEE(smallNPY), uint64(len(smallNPY)), bombNPY))},
			want: "member T0.npy: zip: not a valid zip file"},
		"deflated past the limit": {replies: [][]byte{reply(t, 0, deflated(t, crc32.ChecksumIEEE(bombNPY), uint64(len(bombNPY)), bombNPY))},
			limits: Limits{MaxBytes: 1 << 20}, want: "more than the 1048576 left", limit: true},
		"reply past the limit": {replies: [][]byte{reply(t, 0, npzOf(t, "T0", persistor.FromFloat32(make([]float32, 1<<18), 1<<18)))},
			limits: Limits{MaxBytes: 100 << 10}, want: "reply 1: 1049", limit: true},
		"chunks past the limit": {replies: [][]byte{reply(t, 0, npzOf(t, "T0", small), npzOf(t, "T1", small))},
			limits: Limits{MaxBytes: 600}, want: "chunks of more than 600 bytes", limit: true},
		"too many chunks": {replies: [][]byte{reply(t, 0, npzOf(t, "T0", small), npzOf(t, "T1", small), npzOf(t, "T2", small))},
			limits: Limits{MaxItems: 2}, want: "3 chunks, more than the 2", limit: true},
		"too many arrays": {replies: [][]byte{reply(t, 0, appendNPZ(nil, members(t, "T0", "T1", "T2", "T3")))},
			limits: Limits{MaxItems: 2}, want: "4 members, more than the 2", limit: true},
		"one too many": {replies: [][]byte{reply(t, 0, appendNPZ(nil, members(t, "T0", "T1", "T2")))},
			limits: Limits{MaxItems: 2}, want: "more arrays than the limit", limit: true},
		"large state": {replies: [][]byte{bad(t, msgpk.Map{{Key: "status", Value: "ok"}, {Key: "state", Value: msgpk.Map{{Key: "x", Value: strings.Repeat("x", 5000)}}}, {Key: "data", Value: []any{npzOf(t, "T0", small)}}})},
			want: "the state to send back is of 5"},
		"never done": {replies: [][]byte{reply(t, 0, npzOf(t, "T0", small)), reply(t, 1, npzOf(t, "T1", small)), reply(t, 2, npzOf(t, "T2", small)), eof},
			limits: Limits{MaxRequests: 3}, want: "not done after 3 requests", limit: true},
	} {
		n := 0
		f := &Fetcher{Limits: c.limits, Request: func(_ context.Context, _ string, p []byte) ([]byte, error) {
			if n == len(c.replies) {
				return nil, errors.New("no more replies")
			}
			n++
			return c.replies[n-1], nil
		}}
		_, err := f.Fetch(context.Background(), "site-1.job", "R-1")
		if err == nil || !strings.Contains(err.Error(), "batch R-1 from site-1.job") || !strings.Contains(err.Error(), c.want) || errors.Is(err, ErrLimit) != c.limit {
			t.Errorf("%s: %v", name, err)
		}
	}

	// A batch the sender does not hold: the transport's error, named.
	s := NewService("site-1.job", Config{})
	f := &Fetcher{Request: handler(s, "server", nil)}
	if _, err := f.Fetch(context.Background(), "site-1.job", "R-gone"); err == nil || !strings.Contains(err.Error(), "batch R-gone from site-1.job: request 1: download request: invalid_request: no batch R-gone") {
		t.Errorf("unknown ref: %v", err)
	}
}

func bad(t testing.TB, v any) []byte {
	b, err := fobs.Encode(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func members(t testing.TB, names ...string) []member {
	var ms []member
	for _, n := range names {
		m, err := newMember(n, persistor.FromFloat32([]float32{1}, 1))
		if err != nil {
			t.Fatal(err)
		}
		ms = append(ms, m)
	}
	return ms
}

// What numpy's np.savez_compressed writes (deflated members), and
// several arrays in one .npz, read too.
func TestReadNPZ(t *testing.T) {
	a := persistor.FromFloat32([]float32{1, 2, 3}, 3)
	b, _ := npy.Encode(a)
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	w, _ := zw.CreateHeader(&zip.FileHeader{Name: "T7.npy", Method: zip.Deflate})
	w.Write(b)
	zw.Close()
	got, err := readNPZ(buf.Bytes(), &budget{items: 1, bytes: 1 << 20})
	if err != nil || len(got) != 1 || got[0].Name != "T7" || !reflect.DeepEqual(got[0].Array, a) {
		t.Fatalf("deflated: %v %v", got, err)
	}
	left := budget{items: 3, bytes: 1 << 20}
	got, err = readNPZ(appendNPZ(nil, append([]member{allowPickleMember}, members(t, "T0", "T1", "T2")...)), &left)
	if err != nil || len(got) != 3 || left.items != 0 || left.bytes != 1<<20-3*132 {
		t.Fatalf("three: %v %v, left %+v", got, err, left)
	}
}

// Requests that time out are sent again, after 2 s, 4 s, …, as often as
// Retries says.
func TestFetcherRetries(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := NewService("site-1.job", Config{})
		ref, _ := s.Add(testArrays()[1:2])
		for _, retries := range []int{2, 1} {
			lost, tries := 2, 0
			start := time.Now()
			f := &Fetcher{RequestTimeout: 10 * time.Second, Retries: retries, Request: func(ctx context.Context, fqcn string, p []byte) ([]byte, error) {
				tries++
				if lost > 0 {
					lost--
					<-ctx.Done()
					return nil, ctx.Err()
				}
				return s.Handle("server-"+fmt.Sprint(retries), p)
			}}
			got, err := f.Fetch(context.Background(), "site-1.job", ref)
			switch retries {
			case 2:
				if err != nil || len(got) != 1 || tries != 4 || time.Since(start) != 26*time.Second {
					t.Errorf("2 retries: %v, %d tries in %v", err, tries, time.Since(start))
				}
			case 1:
				if err == nil || !strings.Contains(err.Error(), "no reply in 10s, 2 times") {
					t.Errorf("1 retry: %v", err)
				}
			}
		}
		s.Close()
	})
}

func FuzzReply(f *testing.F) {
	for _, r := range [][]byte{
		reply(f, 0, npzOf(f, "T0", persistor.FromFloat32([]float32{1, 2}, 2))),
		reply(f, 0, appendNPZ(nil, members(f, "T0", "T1"))),
		reply(f, 3, deflated(f, 0, 10, make([]byte, 1000))),
		eofReply(),
	} {
		f.Add(r)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		served := false
		fe := &Fetcher{Limits: Limits{MaxBytes: 1 << 20, MaxItems: 64}, Request: func(context.Context, string, []byte) ([]byte, error) {
			if served {
				return eofReply(), nil
			}
			served = true
			return b, nil
		}}
		fe.Fetch(context.Background(), "x", "R")
	})
}

func FuzzNPZ(f *testing.F) {
	f.Add(npzOf(f, "T0", persistor.FromFloat32([]float32{1, 2}, 2)))
	f.Add(deflated(f, 0, 10, make([]byte, 1000)))
	f.Fuzz(func(t *testing.T, b []byte) {
		left := budget{items: 16, bytes: 1 << 20}
		got, err := readNPZ(b, &left)
		if err == nil && (len(got) > 16 || left.bytes < 0) {
			t.Fatalf("%d arrays, %d bytes left", len(got), left.bytes)
		}
	})
}
