package hci

import (
	"bytes"
	"testing"
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
		SplitArgs(string(data))
	})
}
