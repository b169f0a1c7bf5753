// Package hci speaks NVFlare 2.0's admin console protocol, the one its
// admin tool (fl_admin.sh, FLAdminAPI) uses on the server's admin_port:
// one TCP connection (TLS with client certificates in secure mode) per
// command. Request and reply are JSON documents
//
//	{"time": "...", "data": [{"type": "command", "data": "check_status server"}, {"type": "token", "data": "..."}]}
//
// each sent as one line ended by \x03, the whole transmission ended by
// \x04. Reply items are string, success, error, table (rows), dict, token
// and shutdown.
//
// Entry points: [Server] answers the console (the server's admin port),
// [Client] sends it one command per connection, and [Console] is the
// operator's side over a Client, as NVFlare's admin tool runs it
// (upload_app and wait_run done locally, replies printed as the tool
// prints them).
package hci

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"
)

// Line and transmission ends of the protocol.
const (
	LineEnd = '\x03'
	AllEnd  = '\x04'
)

// Item types.
const (
	TypeString   = "string"
	TypeSuccess  = "success"
	TypeError    = "error"
	TypeTable    = "table"
	TypeDict     = "dict"
	TypeCommand  = "command"
	TypeToken    = "token"
	TypeShutdown = "shutdown"
)

// Item is one entry of a message's data list. Data is a string for every
// type but dict (an object) and table (which has Rows instead).
type Item struct {
	Type string          `json:"type"`
	Data json.RawMessage `json:"data,omitempty"`
	Rows [][]any         `json:"rows,omitempty"`
}

// MarshalJSON writes a table's rows even when there are none (an empty
// table reads back as a table), and no rows for other items.
func (it Item) MarshalJSON() ([]byte, error) {
	if it.Type == TypeTable {
		rows := it.Rows
		if rows == nil {
			rows = [][]any{}
		}
		return json.Marshal(struct {
			Type string  `json:"type"`
			Rows [][]any `json:"rows"`
		}{it.Type, rows})
	}
	type plain Item
	return json.Marshal(plain(it))
}

// Text is a string item's text ("" for other types).
func (it Item) Text() string {
	var s string
	if json.Unmarshal(it.Data, &s) != nil {
		return ""
	}
	return s
}

// Cells are a table's rows as strings (numbers and other JSON values in
// their JSON form); the first row is the header.
func (it Item) Cells() [][]string {
	out := make([][]string, len(it.Rows))
	for i, row := range it.Rows {
		out[i] = make([]string, len(row))
		for j, v := range row {
			if s, ok := v.(string); ok {
				out[i][j] = s
			} else {
				b, _ := json.Marshal(v)
				out[i][j] = string(b)
			}
		}
	}
	return out
}

// Message is one line of a transmission.
type Message struct {
	Time string `json:"time"`
	Data []Item `json:"data"`
}

// TextItem makes a string-typed item (string, success, error, command,
// token, shutdown).
func TextItem(typ, text string) Item {
	b, _ := json.Marshal(text)
	return Item{Type: typ, Data: b}
}

// TableItem makes a table whose header is upper-cased, as NVFlare's Table does.
func TableItem(header []string, rows [][]string) Item {
	all := make([][]any, 0, len(rows)+1)
	h := make([]any, len(header))
	for i, s := range header {
		h[i] = strings.ToUpper(s)
	}
	all = append(all, h)
	for _, r := range rows {
		row := make([]any, len(r))
		for i, s := range r {
			row[i] = s
		}
		all = append(all, row)
	}
	return Item{Type: TypeTable, Rows: all}
}

// DictItem makes a dict item.
func DictItem(v any) (Item, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return Item{}, err
	}
	if len(b) == 0 || b[0] != '{' {
		return Item{}, fmt.Errorf("dict item: %T is not a JSON object", v)
	}
	return Item{Type: TypeDict, Data: b}, nil
}

// now is Python's str(datetime.now()).
func now() string { return time.Now().Format("2006-01-02 15:04:05.000000") }

// validate checks a message as NVFlare's validate_proto does. The items
// come from a successful decode, so the first byte of Data tells its JSON
// type; nothing is decoded again (an upload's data is most of the request).
func validate(m *Message) error {
	if m.Data == nil {
		return errors.New(`no "data" list`)
	}
	for i, it := range m.Data {
		switch it.Type {
		case TypeString, TypeSuccess, TypeError, TypeCommand, TypeToken, TypeShutdown:
			if len(it.Data) == 0 || it.Data[0] != '"' {
				return fmt.Errorf("item %d (%s): data is not a string", i, it.Type)
			}
		case TypeDict:
			if len(it.Data) == 0 || it.Data[0] != '{' {
				return fmt.Errorf("item %d (dict): data is not an object", i)
			}
		case TypeTable:
			if it.Rows == nil {
				return fmt.Errorf("item %d (table): no rows", i)
			}
		default:
			return fmt.Errorf("item %d: unknown type %.40q", i, it.Type)
		}
	}
	return nil
}

// parse decodes and validates one line. json.Unmarshal checks the whole
// text (trailing junk included) before decoding and keeps no copy of it.
func parse(line []byte) (*Message, error) {
	if !utf8.Valid(line) {
		return nil, errors.New("not UTF-8")
	}
	var m Message
	if err := json.Unmarshal(line, &m); err != nil {
		return nil, fmt.Errorf("not a JSON message: %w", err)
	}
	if err := validate(&m); err != nil {
		return nil, err
	}
	return &m, nil
}

// ErrTooLarge is a transmission longer than the reader's limit.
var ErrTooLarge = errors.New("message too large")

// readUntilEnd appends to buf what r sends up to the \x04 that ends a
// transmission and returns it without the \x04. It reads at most limit
// bytes of transmission in all (buf included) and grows buf by doubling,
// so a peer never makes it allocate more than twice what it has sent. With
// more than limit bytes and no \x04 it returns the limit+1 bytes read and
// an error wrapping ErrTooLarge; bytes after the \x04 are dropped (one
// transmission per connection).
func readUntilEnd(r io.Reader, buf []byte, limit int) ([]byte, error) {
	scanned := 0
	for {
		if i := bytes.IndexByte(buf[scanned:], AllEnd); i >= 0 {
			return buf[:scanned+i], nil
		}
		scanned = len(buf)
		if len(buf) > limit {
			return buf, fmt.Errorf("%w: larger than %d bytes", ErrTooLarge, limit)
		}
		if len(buf) == cap(buf) {
			grown := make([]byte, len(buf), min(max(2*cap(buf), 4096), limit+1))
			copy(grown, buf)
			buf = grown
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err != nil && bytes.IndexByte(buf[scanned:], AllEnd) < 0 {
			if errors.Is(err, io.EOF) {
				return buf, errors.New("connection closed before the end of the message")
			}
			return buf, err
		}
	}
}

// lines splits a transmission at \x03, dropping empty lines.
func lines(data []byte) [][]byte {
	var out [][]byte
	for _, l := range bytes.Split(data, []byte{LineEnd}) {
		if len(bytes.TrimSpace(l)) > 0 {
			out = append(out, l)
		}
	}
	return out
}

// parseRequest reads a request transmission (without its \x04): NVFlare's
// server joins its lines (dropping the \x03s) into one JSON document.
func parseRequest(data []byte) (*Message, error) {
	ls := lines(data)
	doc := data
	switch len(ls) {
	case 0:
		doc = nil
	case 1:
		doc = ls[0] // no copy: an upload is one long line
	default:
		doc = bytes.Join(ls, nil)
	}
	m, err := parse(bytes.TrimSpace(doc))
	if err != nil {
		return nil, fmt.Errorf("protocol violation: %w", err)
	}
	return m, nil
}

// ReadRequest reads a request transmission of at most limit bytes.
func ReadRequest(r io.Reader, limit int64) (*Message, error) {
	data, err := readUntilEnd(r, nil, clampLimit(limit))
	if err != nil {
		return nil, err
	}
	return parseRequest(data)
}

// ReadReply reads a reply transmission of at most limit bytes: one or
// more JSON lines.
func ReadReply(r io.Reader, limit int64) ([]*Message, error) {
	data, err := readUntilEnd(r, nil, clampLimit(limit))
	if err != nil {
		return nil, err
	}
	var out []*Message
	for i, l := range lines(data) {
		m, err := parse(l)
		if err != nil {
			return nil, fmt.Errorf("reply line %d: %w", i+1, err)
		}
		out = append(out, m)
	}
	return out, nil
}

// clampLimit makes a limit an int a buffer can have.
func clampLimit(limit int64) int {
	if limit <= 0 {
		return 0
	}
	return int(min(limit, math.MaxInt32))
}

// uploadPrefix matches the start of an upload request as NVFlare's admin
// tools and ours write it: the command item first, its data beginning with
// the upload command. Only such a request may grow past the login limit.
var uploadPrefix = regexp.MustCompile(`^\s*\{\s*(?:"time"\s*:\s*"[^"\\]*"\s*,\s*)?"data"\s*:\s*\[\s*\{\s*"type"\s*:\s*"command"\s*,\s*"data"\s*:\s*"(?:file_transfer\.)?_upload_folder `)

// WriteTransmission writes the messages, one line each, and the end mark.
// The JSON is pure ASCII (as Python's json.dumps writes it): NVFlare's
// reader decodes every 1024-byte chunk as UTF-8 on its own.
func WriteTransmission(w io.Writer, msgs ...*Message) error {
	var buf bytes.Buffer
	for _, m := range msgs {
		if len(m.Data) == 0 {
			continue
		}
		if m.Time == "" {
			m.Time = now()
		}
		b, err := json.Marshal(m)
		if err != nil {
			return err
		}
		buf.Write(asciiJSON(b))
		buf.WriteByte(LineEnd)
	}
	buf.WriteByte(AllEnd)
	_, err := w.Write(buf.Bytes())
	return err
}

// asciiJSON escapes every non-ASCII character of a JSON text as \uXXXX.
func asciiJSON(b []byte) []byte {
	ascii := true
	for _, c := range b {
		if c >= 0x80 {
			ascii = false
			break
		}
	}
	if ascii {
		return b
	}
	out := make([]byte, 0, len(b)+16)
	for _, r := range string(b) {
		switch {
		case r < 0x80:
			out = append(out, byte(r))
		case r > 0xffff:
			r -= 0x10000
			out = fmt.Appendf(out, `\u%04x\u%04x`, 0xd800+(r>>10), 0xdc00+(r&0x3ff))
		default:
			out = fmt.Appendf(out, `\u%04x`, r)
		}
	}
	return out
}

// SplitArgs splits a command line as NVFlare's split_to_args does: with a
// double quote anywhere, POSIX shell quoting (shlex.split); otherwise at
// runs of spaces. It walks the string once, without a copy of it as runes
// (an upload's command is most of its request).
func SplitArgs(line string) ([]string, error) {
	if !strings.Contains(line, `"`) {
		// Runs of spaces count as one; a leading or trailing space still
		// gives an empty first or last argument, as in NVFlare.
		var b strings.Builder
		b.Grow(len(line))
		for i := 0; i < len(line); i++ {
			if line[i] == ' ' && i > 0 && line[i-1] == ' ' {
				continue
			}
			b.WriteByte(line[i])
		}
		return strings.Split(b.String(), " "), nil
	}
	var args []string
	var cur strings.Builder
	inArg := false
	var quote byte
	for i := 0; i < len(line); i++ {
		c := line[i] // quotes, backslashes and spaces are ASCII: other bytes are copied as they are
		switch {
		case quote == '\'':
			if c == '\'' {
				quote = 0
			} else {
				cur.WriteByte(c)
			}
		case quote == '"':
			if c == '"' {
				quote = 0
			} else if c == '\\' && i+1 < len(line) && strings.IndexByte("\\\"$`\n", line[i+1]) >= 0 {
				i++
				cur.WriteByte(line[i])
			} else {
				cur.WriteByte(c)
			}
		case c == '\'' || c == '"':
			quote, inArg = c, true
		case c == '\\':
			if i+1 >= len(line) {
				return nil, errors.New("no escaped character")
			}
			// An escaped character may be several bytes long.
			_, size := utf8.DecodeRuneInString(line[i+1:])
			cur.WriteString(line[i+1 : i+1+size])
			i += size
			inArg = true
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			if inArg {
				args = append(args, cur.String())
				cur.Reset()
				inArg = false
			}
		default:
			cur.WriteByte(c)
			inArg = true
		}
	}
	if quote != 0 {
		return nil, errors.New("no closing quotation")
	}
	if inArg {
		args = append(args, cur.String())
	}
	return args, nil
}

// JoinArgs joins arguments as NVFlare's join_args does: an argument with
// white space is put in double quotes.
func JoinArgs(args []string) string {
	parts := make([]string, len(args))
	for i, a := range args {
		if len(strings.Fields(a)) > 1 {
			parts[i] = `"` + strings.ReplaceAll(strings.ReplaceAll(a, `\`, `\\`), `"`, `\"`) + `"`
		} else {
			parts[i] = strings.TrimSpace(a)
		}
	}
	return strings.Join(parts, " ")
}
