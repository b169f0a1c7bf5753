// Package console is NVFlare 2.4+'s admin protocol on CellNet: the
// commands that NVFlare's admin console and flare_api's Session send on
// channel hci_channel (JSON documents in FOBS strings), the job upload
// through the ObjectStreamer and the file downloads of download_job. The
// Server answers an admin session's cell for a job store (package jobs)
// and the sites of a hub; Dial is the client flarego admin uses.
package console

import (
	"encoding/json"
	"fmt"
	"time"
)

// Meta status values of a reply (NVFlare's MetaStatusValue): flare_api
// turns all but ok into an exception.
const (
	statusOK            = "ok"
	statusSyntax        = "syntax_error"
	statusNotAuthorized = "not_authorized"
	statusNotAuth       = "not_authenticated"
	statusError         = "error"
	statusInternal      = "internal_error"
	statusInvalidTarget = "invalid_target"
	statusInvalidJobDef = "invalid_job_def"
	statusInvalidJobID  = "invalid_job_id"
	statusJobRunning    = "job_running"
	statusJobNotRunning = "job_not_running"
	statusClientsUp     = "clients_running"
	statusNoReply       = "no_reply"
)

// A document is a request or a reply: {time, data: [items], meta}.
type document struct {
	Time string           `json:"time"`
	Data []map[string]any `json:"data"`
	Meta map[string]any   `json:"meta"`
}

// reply builds a reply document.
type reply struct {
	doc document
}

func newReply() *reply {
	return &reply{doc: document{Data: []map[string]any{}, Meta: map[string]any{}}}
}

func (r *reply) add(typ string, data any) *reply {
	r.doc.Data = append(r.doc.Data, map[string]any{"type": typ, "data": data})
	return r
}

func (r *reply) str(format string, args ...any) *reply {
	return r.add("string", fmt.Sprintf(format, args...))
}

// success ends a reply that went well, with meta status ok.
func (r *reply) success() *reply {
	r.add("success", "")
	if _, ok := r.doc.Meta["status"]; !ok {
		r.doc.Meta["status"], r.doc.Meta["info"] = statusOK, ""
	}
	return r
}

// fail is a reply with one error item and its meta status.
func fail(status, info, format string, args ...any) *reply {
	r := newReply()
	r.add("error", fmt.Sprintf(format, args...))
	r.doc.Meta["status"], r.doc.Meta["info"] = status, info
	return r
}

func (r *reply) table(rows [][]any) *reply {
	r.doc.Data = append(r.doc.Data, map[string]any{"type": "table", "rows": rows})
	return r
}

func (r *reply) meta(k string, v any) *reply {
	r.doc.Meta[k] = v
	return r
}

// encode is the reply's JSON text.
func (r *reply) encode() string {
	r.doc.Time = time.Now().Format("2006-01-02 15:04:05.000000")
	b, err := json.Marshal(r.doc)
	if err != nil {
		b, _ = json.Marshal(fail(statusInternal, "", "reply: %v", err).doc)
	}
	return string(b)
}

// maxRequestBytes bounds a command document.
const maxRequestBytes = 64 << 10

// parseRequest reads a command document: its command text and token.
func parseRequest(text string) (cmd, token string, meta map[string]any, err error) {
	if len(text) > maxRequestBytes {
		return "", "", nil, fmt.Errorf("the request is %d bytes, more than %d", len(text), maxRequestBytes)
	}
	var d struct {
		Data []struct {
			Type string `json:"type"`
			Data any    `json:"data"`
		} `json:"data"`
		Meta map[string]any `json:"meta"`
	}
	if err := json.Unmarshal([]byte(text), &d); err != nil {
		return "", "", nil, fmt.Errorf("the request is not an admin document: %v", err)
	}
	for _, it := range d.Data {
		s, _ := it.Data.(string)
		switch it.Type {
		case "command":
			if cmd == "" {
				cmd = s
			}
		case "token":
			token = s
		}
	}
	if cmd == "" {
		return "", "", nil, fmt.Errorf("the request holds no command")
	}
	return cmd, token, d.Meta, nil
}

// splitArgs splits a command line as Python's shlex.split does for the
// quoting NVFlare's client writes: spaces between words, single and
// double quotes, backslash escapes outside single quotes.
func splitArgs(s string) ([]string, error) {
	var args []string
	var cur []rune
	in, quote, esc := false, rune(0), false
	for _, c := range s {
		switch {
		case esc:
			cur, esc, in = append(cur, c), false, true
		case c == '\\' && quote != '\'':
			esc = true
		case quote != 0:
			if c == quote {
				quote = 0
			} else {
				cur = append(cur, c)
			}
		case c == '"' || c == '\'':
			quote, in = c, true
		case c == ' ' || c == '\t' || c == '\n':
			if in {
				args, cur, in = append(args, string(cur)), nil, false
			}
		default:
			cur, in = append(cur, c), true
		}
	}
	if quote != 0 || esc {
		return nil, fmt.Errorf("unbalanced quotes")
	}
	if in {
		args = append(args, string(cur))
	}
	return args, nil
}
