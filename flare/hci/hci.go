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
package hci

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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

// validate checks a message as NVFlare's validate_proto does.
func validate(m *Message) error {
	if m.Data == nil {
		return errors.New(`no "data" list`)
	}
	for i, it := range m.Data {
		switch it.Type {
		case TypeString, TypeSuccess, TypeError, TypeCommand, TypeToken, TypeShutdown:
			var s string
			if len(it.Data) == 0 || json.Unmarshal(it.Data, &s) != nil {
				return fmt.Errorf("item %d (%s): data is not a string", i, it.Type)
			}
		case TypeDict:
			var d map[string]any
			if len(it.Data) == 0 || json.Unmarshal(it.Data, &d) != nil || d == nil {
				return fmt.Errorf("item %d (dict): data is not an object", i)
			}
		case TypeTable:
			if it.Rows == nil {
				return fmt.Errorf("item %d (table): no rows", i)
			}
		default:
			return fmt.Errorf("item %d: unknown type %q", i, it.Type)
		}
	}
	return nil
}

// parse decodes and validates one line.
func parse(line []byte) (*Message, error) {
	if !utf8.Valid(line) {
		return nil, errors.New("not UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(line))
	var m Message
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("not a JSON message: %w", err)
	}
	if dec.More() {
		return nil, errors.New("junk after the JSON message")
	}
	if err := validate(&m); err != nil {
		return nil, err
	}
	return &m, nil
}

// readTransmission reads up to the \x04 that ends a transmission, at most
// limit bytes, and returns its lines (split at \x03, empty ones dropped).
func readTransmission(r io.Reader, limit int64) ([][]byte, error) {
	br := bufio.NewReaderSize(io.LimitReader(r, limit+1), 64<<10)
	data, err := br.ReadSlice(AllEnd)
	var buf []byte
	for errors.Is(err, bufio.ErrBufferFull) {
		buf = append(buf, data...)
		data, err = br.ReadSlice(AllEnd)
	}
	if buf != nil {
		data = append(buf, data...)
	}
	if err != nil {
		if int64(len(data)) > limit {
			return nil, fmt.Errorf("message larger than %d bytes", limit)
		}
		if errors.Is(err, io.EOF) {
			return nil, errors.New("connection closed before the end of the message")
		}
		return nil, err
	}
	data = data[:len(data)-1]
	var lines [][]byte
	for _, l := range bytes.Split(data, []byte{LineEnd}) {
		if len(bytes.TrimSpace(l)) > 0 {
			lines = append(lines, l)
		}
	}
	return lines, nil
}

// ReadRequest reads a request transmission: NVFlare's server joins its
// lines (dropping the \x03s) into one JSON document.
func ReadRequest(r io.Reader, limit int64) (*Message, error) {
	lines, err := readTransmission(r, limit)
	if err != nil {
		return nil, err
	}
	m, err := parse(bytes.TrimSpace(bytes.Join(lines, nil)))
	if err != nil {
		return nil, fmt.Errorf("protocol violation: %w", err)
	}
	return m, nil
}

// ReadReply reads a reply transmission: one or more JSON lines.
func ReadReply(r io.Reader, limit int64) ([]*Message, error) {
	lines, err := readTransmission(r, limit)
	if err != nil {
		return nil, err
	}
	var out []*Message
	for i, l := range lines {
		m, err := parse(l)
		if err != nil {
			return nil, fmt.Errorf("reply line %d: %w", i+1, err)
		}
		out = append(out, m)
	}
	return out, nil
}

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
// runs of spaces.
func SplitArgs(line string) ([]string, error) {
	if !strings.Contains(line, `"`) {
		for strings.Contains(line, "  ") {
			line = strings.ReplaceAll(line, "  ", " ")
		}
		return strings.Split(line, " "), nil
	}
	var args []string
	var cur strings.Builder
	inArg := false
	var quote rune
	rs := []rune(line)
	for i := 0; i < len(rs); i++ {
		r := rs[i]
		switch {
		case quote == '\'':
			if r == '\'' {
				quote = 0
			} else {
				cur.WriteRune(r)
			}
		case quote == '"':
			if r == '"' {
				quote = 0
			} else if r == '\\' && i+1 < len(rs) && strings.ContainsRune("\\\"$`\n", rs[i+1]) {
				i++
				cur.WriteRune(rs[i])
			} else {
				cur.WriteRune(r)
			}
		case r == '\'' || r == '"':
			quote, inArg = r, true
		case r == '\\':
			if i+1 >= len(rs) {
				return nil, errors.New("no escaped character")
			}
			i++
			cur.WriteRune(rs[i])
			inArg = true
		case r == ' ' || r == '\t' || r == '\n' || r == '\r':
			if inArg {
				args = append(args, cur.String())
				cur.Reset()
				inArg = false
			}
		default:
			cur.WriteRune(r)
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
