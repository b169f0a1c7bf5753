package console

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/cellnet/cell"
	"github.com/flarego/flarego/flare/cellnet/conn"
	"github.com/flarego/flarego/flare/cellnet/deploy"
	"github.com/flarego/flarego/flare/cellnet/fobs"
	"github.com/flarego/flarego/flare/cellnet/msgpk"
	"github.com/flarego/flarego/flare/cellnet/register"
	"github.com/flarego/flarego/flare/cellnet/stream"
	"github.com/flarego/flarego/persistor/pickle"
)

// A Client is an admin session on an NVFlare 2.4+ server (NVFlare's or
// flarego's), logged in with the admin's certificate.
type Client struct {
	// Timeout bounds each command (default 10 s).
	Timeout time.Duration

	id    *register.Identity
	c     *cell.Cell
	st    *stream.Streamer
	token string
}

// Reply is a command's reply: its items and meta.
type Reply struct {
	Items []map[string]any
	Meta  map[string]any
}

// Status is the reply's meta status ("" when it has none).
func (r *Reply) Status() string { s, _ := r.Meta["status"].(string); return s }

// Err is the reply's failure: a meta status other than ok, or an error
// item.
func (r *Reply) Err() error {
	var msgs []string
	for _, it := range r.Items {
		if it["type"] == "error" {
			msgs = append(msgs, fmt.Sprint(it["data"]))
		}
	}
	if st := r.Status(); st != "" && st != statusOK {
		if len(msgs) == 0 {
			msgs = append(msgs, fmt.Sprint(r.Meta["info"]))
		}
		return fmt.Errorf("%s: %s", st, strings.Join(msgs, "; "))
	}
	if len(msgs) > 0 {
		return errors.New(strings.Join(msgs, "; "))
	}
	return nil
}

// Dial connects to the server at target as id (its Type set to admin),
// registers, and logs in with id's certificate.
func Dial(ctx context.Context, target string, opts []grpc.DialOption, id *register.Identity) (*Client, error) {
	cid := *id
	cid.Type = "admin"
	fqcn := "_admin_" + flare.NewUUID()
	cn, err := conn.Dial(ctx, target, fqcn, opts...)
	if err != nil {
		return nil, err
	}
	c := cell.New(cn, fqcn)
	c.Handle("cellnet.channel", "bye", func(*cell.Message) *cell.Message { return &cell.Message{} })
	if _, err := register.Register(ctx, c, &cid, ""); err != nil {
		c.Close()
		return nil, err
	}
	cl := &Client{id: &cid, c: c, st: stream.New(c, stream.Limits{})}
	sig, err := register.Sign(cid.Key, cid.Name)
	if err != nil {
		cl.Close()
		return nil, err
	}
	r, err := cl.request(ctx, "_cert_login "+cid.Name, msgpk.Map{{Key: "user_name", Value: cid.Name}, {Key: "cert", Value: cid.CertPEM},
		{Key: "signature", Value: sig}, {Key: "study", Value: "default"}})
	if err != nil {
		cl.Close()
		return nil, fmt.Errorf("login: %w", err)
	}
	for _, it := range r.Items {
		switch it["type"] {
		case "token":
			cl.token, _ = it["data"].(string)
		case "string":
			if s, _ := it["data"].(string); strings.HasPrefix(s, "REJECT") {
				cl.Close()
				return nil, fmt.Errorf("login refused: %s", flare.LogSafe(s))
			}
		}
	}
	if cl.token == "" {
		cl.Close()
		return nil, errors.New("login: the server gave no session token")
	}
	return cl, nil
}

// Close logs out and closes the connection.
func (cl *Client) Close() error {
	if cl.token != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		cl.Do(ctx, "_logout")
		cancel()
		cl.token = ""
	}
	cl.st.Close()
	return cl.c.Close()
}

func (cl *Client) timeout() time.Duration {
	if cl.Timeout > 0 {
		return cl.Timeout
	}
	return 10 * time.Second
}

// document is a command document with the session's token.
func (cl *Client) document(cmd string) string {
	d := document{Time: time.Now().Format("2006-01-02 15:04:05.000000"), Data: []map[string]any{{"type": "command", "data": cmd}}, Meta: map[string]any{}}
	if cl.token != "" {
		d.Data = append(d.Data, map[string]any{"type": "token", "data": cl.token})
	}
	b, _ := json.Marshal(d)
	return string(b)
}

func (cl *Client) request(ctx context.Context, cmd string, headers msgpk.Map) (*Reply, error) {
	b, err := fobs.Encode(cl.document(cmd))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, cl.timeout())
	defer cancel()
	m, err := cl.st.Request(ctx, "server", ChannelHCI, TopicCommand, headers, b, cell.EncodingFOBS)
	if err != nil {
		return nil, err
	}
	if rc := m.String(cell.HReturnCode); rc != "" && rc != cell.RCOK {
		return nil, fmt.Errorf("the server refused the command: %s %s", rc, flare.LogSafe(m.String(cell.HError)))
	}
	v, err := fobs.DecodeBytes(m.Payload, fobs.Options{})
	if err != nil {
		return nil, err
	}
	text, ok := v.(string)
	if !ok {
		return nil, fmt.Errorf("the server's reply is a %T, not a document", v)
	}
	return parseReply(text)
}

// maxReplyBytes bounds a reply document.
const maxReplyBytes = 64 << 20

func parseReply(text string) (*Reply, error) {
	if len(text) > maxReplyBytes {
		return nil, fmt.Errorf("the reply is %d bytes, more than %d", len(text), maxReplyBytes)
	}
	var d struct {
		Data []map[string]any `json:"data"`
		Meta map[string]any   `json:"meta"`
	}
	if err := json.Unmarshal([]byte(text), &d); err != nil {
		return nil, fmt.Errorf("the reply is not an admin document: %v", err)
	}
	if d.Meta == nil {
		d.Meta = map[string]any{}
	}
	return &Reply{Items: d.Data, Meta: d.Meta}, nil
}

// Do runs a command; the reply's failure is the caller's to read (Err).
func (cl *Client) Do(ctx context.Context, cmd string) (*Reply, error) {
	return cl.request(ctx, cmd, nil)
}

// Submit signs the job folder dir with the admin's key (as NVFlare's
// admin client does, in a copy: dir is not changed), uploads it and
// returns the new job's id.
func (cl *Client) Submit(ctx context.Context, dir string) (string, error) {
	dir = filepath.Clean(dir)
	name := filepath.Base(dir)
	if err := flare.CheckPathName("job folder", name); err != nil {
		return "", err
	}
	if _, err := os.Stat(filepath.Join(dir, "meta.json")); err != nil {
		return "", fmt.Errorf("%s is not a job folder (no meta.json)", dir)
	}
	signed, err := deploy.SignedZip(dir, cl.id.Key, cl.id.CertPEM)
	if err != nil {
		return "", err
	}
	data, err := prefixZip(signed, name)
	if err != nil {
		return "", err
	}
	r, err := cl.Upload(ctx, "job_mgmt.submit_job "+name, data)
	if err != nil {
		return "", err
	}
	if err := r.Err(); err != nil {
		return "", err
	}
	id, _ := r.Meta["job_id"].(string)
	if id == "" {
		return "", errors.New("the server gave no job id")
	}
	return id, nil
}

// prefixZip puts every entry of a zip under prefix/.
func prefixZip(data []byte, prefix string) ([]byte, error) {
	zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, f := range zr.File {
		w, err := zw.Create(prefix + "/" + f.Name)
		if err != nil {
			return nil, err
		}
		rc, err := f.Open()
		if err != nil {
			return nil, err
		}
		_, err = io.Copy(w, rc)
		rc.Close()
		if err != nil {
			return nil, err
		}
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// uploadChunk is the ObjectStreamer's chunk size.
const uploadChunk = 1 << 20

// Upload streams data with the command cmd as NVFlare's push_folder does
// (ObjectStreamer chunks on hci.upload/folder) and returns the command's
// reply.
func (cl *Client) Upload(ctx context.Context, cmd string, data []byte) (*Reply, error) {
	tx := flare.NewUUID()
	for seq, off := 0, 0; ; seq++ {
		end := min(off+uploadChunk, len(data))
		eof := end == len(data)
		sh := flare.NewShareable()
		sh.SetHeader(hdrChannel, uploadChannel)
		sh.SetHeader(hdrTopic, uploadTopic)
		sh.SetHeader(hdrTxID, tx)
		sh.SetHeader(hdrSeq, int64(seq))
		sh.SetHeader("__topic__", TopicObjRequest)
		if seq == 0 {
			sh.SetHeader(hdrCtx, &pickle.Dict{Items: []pickle.Item{{Key: ctxConnData, Value: cl.document(cmd)},
				{Key: ctxFileSize, Value: int64(len(data))}, {Key: "Streamer.file_name", Value: flare.NewUUID()},
				{Key: "__topic__", Value: uploadTopic}, {Key: "__channel__", Value: uploadChannel}}})
		}
		sh.Extra = []pickle.Item{{Key: itemData, Value: data[off:end]}, {Key: itemSize, Value: int64(end - off)}, {Key: itemEOF, Value: eof}}
		b, err := fobs.Encode(sh)
		if err != nil {
			return nil, err
		}
		cctx, cancel := context.WithTimeout(ctx, cl.timeout())
		m, err := cl.st.Request(cctx, "server", ChannelAux, TopicObjRequest, nil, b, cell.EncodingFOBS)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("upload: %w", err)
		}
		v, err := fobs.DecodeBytes(m.Payload, fobs.Options{})
		if err != nil {
			return nil, fmt.Errorf("upload reply: %w", err)
		}
		rsh, ok := v.(*flare.Shareable)
		if !ok {
			return nil, fmt.Errorf("upload reply: a %T", v)
		}
		if rc := rsh.ReturnCode(); rc != flare.RCOK {
			return nil, fmt.Errorf("upload refused: %s", flare.LogSafe(rc))
		}
		if eof {
			text := rsh.HeaderString(hdrEndResult)
			if text == "" {
				return nil, errors.New("upload: the server gave no result")
			}
			return parseReply(text)
		}
		off = end
	}
}

// maxDownloadBytes bounds one downloaded file.
const maxDownloadBytes = 4 << 30

// Download fetches a finished job's files (download_job) into
// dest/<job id>: meta.json, the job as submitted under job/, and its
// workspace under workspace/ (the zips unpacked, as NVFlare's admin
// client leaves them). It returns that folder.
func (cl *Client) Download(ctx context.Context, jobID, dest string) (string, error) {
	r, err := cl.Do(ctx, "job_mgmt.download_job "+jobID)
	if err != nil {
		return "", err
	}
	if err := r.Err(); err != nil {
		return "", err
	}
	files, _ := r.Meta["files"].([]any)
	source, _ := r.Meta["source_fqcn"].(string)
	if source == "" {
		source = "server"
	}
	out := filepath.Join(dest, jobID)
	if err := flare.CheckPathName("job id", jobID); err != nil {
		return "", err
	}
	if _, err := os.Stat(out); err == nil {
		return "", fmt.Errorf("%s is there already", out)
	}
	tmp, err := os.MkdirTemp(dest, ".download-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	for _, f := range files {
		pair, _ := f.([]any)
		if len(pair) != 2 {
			return "", fmt.Errorf("download_job: a file entry %v", flare.LogCut(fmt.Sprint(f)))
		}
		name, _ := pair[0].(string)
		ref, _ := pair[1].(string)
		if err := flare.CheckPathName("downloaded file", name); err != nil {
			return "", err
		}
		data, err := cl.fetch(ctx, source, ref)
		if err != nil {
			return "", fmt.Errorf("%s: %w", name, err)
		}
		if base, ok := strings.CutSuffix(name, ".zip"); ok {
			if err := flare.UnzipApp(data, filepath.Join(tmp, base)); err != nil {
				return "", fmt.Errorf("%s: %w", name, err)
			}
			continue
		}
		if err := os.WriteFile(filepath.Join(tmp, name), data, 0o600); err != nil {
			return "", err
		}
	}
	if err := os.Rename(tmp, out); err != nil {
		return "", err
	}
	return out, nil
}

// fetch pulls one file from the download service.
func (cl *Client) fetch(ctx context.Context, source, ref string) ([]byte, error) {
	var data []byte
	for {
		req := msgpk.Map{{Key: "ref_id", Value: ref}}
		if len(data) > 0 {
			req = append(req, msgpk.KV{Key: "state", Value: msgpk.Map{{Key: "received_bytes", Value: int64(len(data))}}})
		}
		b, err := fobs.Encode(req)
		if err != nil {
			return nil, err
		}
		cctx, cancel := context.WithTimeout(ctx, cl.timeout())
		m, err := cl.st.Request(cctx, source, ChannelDownload, TopicDownload, nil, b, cell.EncodingFOBS)
		cancel()
		if err != nil {
			return nil, err
		}
		if rc := m.String(cell.HReturnCode); rc != "" && rc != cell.RCOK {
			return nil, fmt.Errorf("download refused: %s %s", rc, flare.LogSafe(m.String(cell.HError)))
		}
		v, err := fobs.DecodeBytes(m.Payload, fobs.Options{})
		if err != nil {
			return nil, err
		}
		rep, _ := v.(msgpk.Map)
		switch rep.String("status") {
		case "eof":
			return data, nil
		case "ok":
			chunk, _ := rep.Get("data")
			b, _ := chunk.([]byte)
			if len(b) == 0 || int64(len(data)+len(b)) > maxDownloadBytes {
				return nil, fmt.Errorf("download: an empty chunk, or more than %d bytes", int64(maxDownloadBytes))
			}
			data = append(data, b...)
		default:
			return nil, fmt.Errorf("download: status %q", flare.LogCut(rep.String("status")))
		}
	}
}
