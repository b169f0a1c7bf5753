package hci

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzReadRequest feeds untrusted bytes (what reaches the admin port
// before any login) to the request and reply readers and the command
// splitter: errors are fine, panics are not, and what was accepted
// writes back to an equal message.
func FuzzReadRequest(f *testing.F) {
	var buf bytes.Buffer
	WriteTransmission(&buf, &Message{Data: []Item{TextItem(TypeCommand, `_login "a b" c`), TextItem(TypeToken, "t")}})
	f.Add(buf.Bytes())
	buf.Reset()
	d, _ := DictItem(map[string]any{"k": []int{1}})
	WriteTransmission(&buf, &Message{Data: []Item{TableItem([]string{"a"}, [][]string{{"1"}}), d, TextItem(TypeShutdown, "bye")}})
	f.Add(buf.Bytes())
	f.Add([]byte("{\"data\": [{\"type\": \"table\", \"rows\": [[1, null, {}]]}]}\x03\x04"))
	// A login far past the limit, an upload's start without its end, a
	// string item holding a number, escapes of multibyte characters.
	f.Add(append([]byte(`{"time": "t", "data": [{"type": "command", "data": "_login admin `), bytes.Repeat([]byte("A"), 1<<17)...))
	f.Add([]byte(`{"time": "t", "data": [{"type": "command", "data": "file_transfer._upload_folder app UEsDB`))
	f.Add([]byte(`{"data": [{"type": "token", "data": 7}]}` + "\x03\x04"))
	f.Add([]byte("{\"data\": [{\"type\": \"command\", \"data\": \"a \\\"b\\\\\u00e9 c\\\" d\\\\\u00e9  \"}]}\x04"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if m, err := ReadRequest(bytes.NewReader(data), 1<<16); err == nil {
			for _, it := range m.Data {
				if it.Type == TypeCommand {
					SplitArgs(it.Text())
				}
				it.Cells()
			}
			var out bytes.Buffer
			if err := WriteTransmission(&out, m); err != nil {
				t.Fatal(err)
			}
			if _, err := ReadRequest(&out, 1<<20); err != nil && len(m.Data) > 0 {
				t.Fatalf("an accepted message does not read back: %v", err)
			}
		}
		ReadReply(bytes.NewReader(data), 1<<16)
		got, err := SplitArgs(string(data))
		if !utf8.Valid(data) {
			return // the rune walk made U+FFFD of bad bytes; commands are UTF-8
		}
		want, werr := splitArgsRunes(string(data))
		if (err == nil) != (werr == nil) || (err == nil && !slices.Equal(got, want)) {
			t.Fatalf("SplitArgs(%q) = %q, %v; by runes %q, %v", data, got, err, want, werr)
		}
	})
}

// splitArgsRunes is SplitArgs as it was written before it walked bytes:
// over runes, collapsing spaces by repeated replacement.
func splitArgsRunes(line string) ([]string, error) {
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
