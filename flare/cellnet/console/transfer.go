package console

import (
	"fmt"
	"time"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/cellnet/cell"
	"github.com/flarego/flarego/flare/cellnet/fobs"
	"github.com/flarego/flarego/flare/cellnet/msgpk"
	"github.com/flarego/flarego/flare/jobs"
	"github.com/flarego/flarego/persistor/pickle"
)

// ObjectStreamer's header and item names (NVFlare's file streaming).
const (
	hdrChannel   = "ObjectStreamer.CHANNEL"
	hdrTopic     = "ObjectStreamer.TOPIC"
	hdrTxID      = "ObjectStreamer.TX_ID"
	hdrSeq       = "ObjectStreamer.SEQ"
	hdrCtx       = "ObjectStreamer.CTX"
	hdrEndResult = "ObjectStreamer.END_RESULT"
	ctxConnData  = "conn_data"
	ctxFileSize  = "FileStreamer.file_size"
	itemData     = "Streamer.data"
	itemSize     = "Streamer.size"
	itemEOF      = "Streamer.eof"
	uploadIdle   = time.Minute
	fileChunk    = 5 << 20
)

// An upload is a job zip coming in chunks.
type upload struct {
	cmd  string // the command document in the stream's context
	size int64
	data []byte
	seq  int64
	last time.Time
}

func rcShareable(rc string, extra ...msgpk.KV) *cell.Message {
	sh := flare.NewShareable()
	sh.SetHeader(flare.HeaderRC, rc)
	for _, kv := range extra {
		sh.Headers.Set(kv.Key, kv.Value)
	}
	b, err := fobs.Encode(sh)
	if err != nil {
		return &cell.Message{Headers: msgpk.Map{{Key: cell.HReturnCode, Value: cell.RCProcessException}, {Key: cell.HError, Value: err.Error()}}}
	}
	return &cell.Message{Payload: b}
}

func extraItem(sh *flare.Shareable, k string) any {
	for _, it := range sh.Extra {
		if it.Key == k {
			return it.Value
		}
	}
	return nil
}

func asInt(v any) (int64, bool) {
	switch x := v.(type) {
	case int64:
		return x, true
	case int:
		return int64(x), true
	case uint64:
		if x < 1<<62 {
			return int64(x), true
		}
	}
	return 0, false
}

// objectRequest takes one chunk of an ObjectStreamer upload: the job zip
// of submit_job. The last chunk runs the command of the stream's context
// with the zip, and its reply carries the command's reply.
func (ss *sessionConn) objectRequest(m *cell.Message) *cell.Message {
	bad := func(format string, a ...any) *cell.Message {
		ss.s.logf("admin upload refused: "+format, a...)
		return rcShareable("BAD_REQUEST_DATA")
	}
	v, err := fobs.DecodeBytes(m.Payload, fobs.Options{})
	if err != nil {
		return bad("%v", err)
	}
	sh, ok := v.(*flare.Shareable)
	if !ok {
		return bad("a %T, not a Shareable", v)
	}
	tx, seq := sh.HeaderString(hdrTxID), int64(-1)
	if s, ok := sh.Header(hdrSeq); ok {
		seq, _ = asInt(s)
	}
	if tx == "" || seq < 0 || sh.HeaderString(hdrChannel) != uploadChannel || sh.HeaderString(hdrTopic) != uploadTopic {
		return bad("not a job upload (channel %q, topic %q)", flare.LogCut(sh.HeaderString(hdrChannel)), flare.LogCut(sh.HeaderString(hdrTopic)))
	}
	data, _ := extraItem(sh, itemData).([]byte)
	size, _ := asInt(extraItem(sh, itemSize))
	eof, _ := extraItem(sh, itemEOF).(bool)
	if size != int64(len(data)) {
		return bad("upload %s: chunk %d says %d bytes and holds %d", flare.LogSafe(tx), seq, size, len(data))
	}
	ss.mu.Lock()
	for id, u := range ss.uploads {
		if time.Since(u.last) > uploadIdle {
			delete(ss.uploads, id)
		}
	}
	u := ss.uploads[tx]
	if seq == 0 {
		if u != nil {
			ss.mu.Unlock()
			return bad("upload %s started twice", flare.LogSafe(tx))
		}
		if len(ss.uploads) >= maxUploadsAtOnce {
			ss.mu.Unlock()
			return bad("%d uploads at once on this session", len(ss.uploads))
		}
		ctx, _ := sh.Header(hdrCtx)
		d, _ := ctx.(*pickle.Dict)
		if d == nil {
			ss.mu.Unlock()
			return bad("upload %s: no context", flare.LogSafe(tx))
		}
		cmd, _ := d.Get(ctxConnData)
		total, _ := d.Get(ctxFileSize)
		u = &upload{}
		u.cmd, _ = cmd.(string)
		u.size, _ = asInt(total)
		if u.cmd == "" || u.size < 0 || u.size > jobs.MaxJobBytes {
			ss.mu.Unlock()
			return bad("upload %s: a job of %d bytes (at most %d), or no command", flare.LogSafe(tx), u.size, jobs.MaxJobBytes)
		}
		// Only a logged-in session uploads: its token is checked now,
		// before any byte is kept, and again when the command runs.
		_, token, _, err := parseRequest(u.cmd)
		if sess, ok := ss.s.session(token); err != nil || !ok || sess.origin != m.String(cell.HOrigin) {
			ss.mu.Unlock()
			return bad("upload %s: not from a logged-in session", flare.LogSafe(tx))
		}
		ss.uploads[tx] = u
	} else if u == nil || seq != u.seq {
		ss.mu.Unlock()
		return bad("upload %s: chunk %d out of turn", flare.LogSafe(tx), seq)
	}
	if int64(len(u.data))+size > u.size {
		delete(ss.uploads, tx)
		ss.mu.Unlock()
		return bad("upload %s: more than the %d bytes declared", flare.LogSafe(tx), u.size)
	}
	u.data = append(u.data, data...) // grows with what came, not with what was declared
	u.seq, u.last = seq+1, time.Now()
	if !eof {
		ss.mu.Unlock()
		return rcShareable(flare.RCOK)
	}
	delete(ss.uploads, tx)
	ss.mu.Unlock()
	if int64(len(u.data)) != u.size {
		return bad("upload %s: %d bytes of the %d declared", flare.LogSafe(tx), len(u.data), u.size)
	}
	text := ss.run(m, u.cmd, u.data).encode()
	return rcShareable(flare.RCOK, msgpk.KV{Key: hdrEndResult, Value: text})
}

// objectAbort drops an upload the sender gave up (no reply).
func (ss *sessionConn) objectAbort(m *cell.Message) *cell.Message {
	if v, err := fobs.DecodeBytes(m.Payload, fobs.Options{}); err == nil {
		if sh, ok := v.(*flare.Shareable); ok {
			ss.mu.Lock()
			delete(ss.uploads, sh.HeaderString(hdrTxID))
			ss.mu.Unlock()
		}
	}
	return nil
}

// download serves the files of download_job: raw bytes in chunks of at
// most 5 MiB after the requester's received_bytes, then eof.
func (ss *sessionConn) download(m *cell.Message) *cell.Message {
	v, err := fobs.DecodeBytes(m.Payload, fobs.Options{})
	if err != nil {
		return &cell.Message{Headers: msgpk.Map{{Key: cell.HReturnCode, Value: cell.RCInvalidRequest}, {Key: cell.HError, Value: err.Error()}}}
	}
	req, _ := v.(msgpk.Map)
	ref := req.String("ref_id")
	var got int64
	if st, ok := req.Get("state"); ok {
		if sm, ok := st.(msgpk.Map); ok {
			if n, ok := sm.Get("received_bytes"); ok {
				got, _ = asInt(n)
			}
		}
	}
	ss.mu.Lock()
	data, ok := ss.files[ref]
	ss.mu.Unlock()
	if !ok {
		return &cell.Message{Headers: msgpk.Map{{Key: cell.HReturnCode, Value: cell.RCInvalidRequest},
			{Key: cell.HError, Value: fmt.Sprintf("no file %s", flare.LogCut(ref))}}}
	}
	if got < 0 || got > int64(len(data)) {
		return encodeMap(msgpk.Map{{Key: "status", Value: "error"}})
	}
	if got == int64(len(data)) {
		ss.mu.Lock()
		delete(ss.files, ref)
		ss.mu.Unlock()
		return encodeMap(msgpk.Map{{Key: "status", Value: "eof"}})
	}
	end := min(got+fileChunk, int64(len(data)))
	return encodeMap(msgpk.Map{{Key: "status", Value: "ok"}, {Key: "state", Value: msgpk.Map{{Key: "received_bytes", Value: end}}},
		{Key: "data", Value: data[got:end]}})
}

func encodeMap(mp msgpk.Map) *cell.Message {
	b, err := fobs.Encode(mp)
	if err != nil {
		return &cell.Message{Headers: msgpk.Map{{Key: cell.HReturnCode, Value: cell.RCProcessException}, {Key: cell.HError, Value: err.Error()}}}
	}
	return &cell.Message{Payload: b}
}
