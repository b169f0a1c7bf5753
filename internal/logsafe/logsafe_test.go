package logsafe

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestEscape(t *testing.T) {
	for in, want := range map[string]string{
		"plain":           "plain",
		"two\nlines\r":    `two\nlines\r`,
		"esc\x1b[2J":      `esc\x1b[2J`,
		"nul\x00":         `nul\x00`,
		"bad\xffutf8":     `bad\xffutf8`,
		`back\slash`:      `back\\slash`,
		"line\u2028sep":   `line\u2028sep`,
		"snowman ☃ stays": "snowman ☃ stays",
		"real \uFFFD":     "real \uFFFD",
		`say "hi"`:        `say "hi"`,
	} {
		if got := Escape(in, 200); got != want {
			t.Errorf("Escape(%q) = %q, want %q", in, got, want)
		}
	}
}

// A string that fits used to be cut once it was longer than max-31 bytes
// (room kept for the longest possible note): one that fits comes out
// whole, whatever its length.
func TestEscapeFitsWholeNotCut(t *testing.T) {
	for _, n := range []int{1, 169, 170, 199, 200} {
		s := strings.Repeat("y", n)
		if got := Escape(s, 200); got != s {
			t.Errorf("%d bytes in 200: %q", n, got)
		}
	}
	// Escaping counts: 100 newlines are 200 bytes escaped and fit, 101 do not.
	if got := Escape(strings.Repeat("\n", 100), 200); got != strings.Repeat(`\n`, 100) {
		t.Errorf("100 newlines in 200: %q", got)
	}
	if got := Escape(strings.Repeat("\n", 101), 200); len(got) > 200 || !strings.HasSuffix(got, "...(101 bytes)") {
		t.Errorf("101 newlines in 200: %d bytes, %q", len(got), got)
	}
}

// What does not fit is cut at a whole character or escape, ends with the
// whole's length and is at most max bytes, however long the input.
func TestEscapeCutBounded(t *testing.T) {
	for _, tc := range []struct {
		in   string
		max  int
		note string
	}{
		{strings.Repeat("y", 201), 200, "...(201 bytes)"},
		{strings.Repeat("y", 1<<20), 200, "...(1048576 bytes)"},
		{strings.Repeat("é\n", 2000), 4096, "...(6000 bytes)"},
		{strings.Repeat("☃", 100), 40, "...(300 bytes)"},
		{strings.Repeat("\x1b", 100), 40, "...(100 bytes)"},
		{strings.Repeat("z", 100), 32, "...(100 bytes)"},
	} {
		got := Escape(tc.in, tc.max)
		if len(got) > tc.max || !strings.HasSuffix(got, tc.note) || !utf8.ValidString(got) {
			t.Errorf("%d bytes in %d: %d bytes, %q", len(tc.in), tc.max, len(got), got)
		}
		kept := strings.TrimSuffix(got, tc.note)
		if want := Escape(tc.in, 1<<30); !strings.HasPrefix(want, kept) || len(kept)+len(tc.note) < tc.max-len(`\x1b`) {
			t.Errorf("%d bytes in %d: kept %q, not the longest whole prefix of the escaped text", len(tc.in), tc.max, kept)
		}
	}
}

// Quote keeps values written side by side apart: spaces, quotes, empty
// values and anything escaped go in double quotes, within max.
func TestQuote(t *testing.T) {
	for in, want := range map[string]string{
		"admin":         "admin",
		"":              `""`,
		"a b":           `"a b"`,
		`say"hi`:        `"say\"hi"`,
		"x\nforged":     `"x\nforged"`,
		`back\slash`:    `"back\\slash"`,
		"☃":             "☃",
		"bad\xff":       `"bad\xff"`,
		"tab\there now": `"tab\there now"`,
	} {
		if got := Quote(in, 80); got != want {
			t.Errorf("Quote(%q) = %q, want %q", in, got, want)
		}
	}
	if got := Quote(strings.Repeat("A", 80), 80); got != strings.Repeat("A", 80) {
		t.Errorf("80 bytes in 80: %q", got)
	}
	got := Quote(strings.Repeat("A", 81), 80)
	if len(got) > 80 || !strings.HasPrefix(got, `"AAA`) || !strings.HasSuffix(got, `...(81 bytes)"`) {
		t.Errorf("81 bytes in 80: %d bytes, %q", len(got), got)
	}
}

func FuzzEscape(f *testing.F) {
	f.Add("plain", 32)
	f.Add("a\nforged line", 40)
	f.Add(strings.Repeat("é\x1b", 50), 64)
	f.Add("bad\xff\xfe utf-8 \u2028", 33)
	f.Add(strings.Repeat("y", 200), 200)
	f.Fuzz(func(t *testing.T, s string, max int) {
		if max < 32 || max > 1<<16 {
			return
		}
		whole := Escape(s, 1<<30)
		for _, got := range []string{Escape(s, max), Quote(s, max)} {
			if len(got) > max {
				t.Fatalf("%d bytes in %d: %q", len(got), max, got)
			}
			if strings.ContainsFunc(got, func(r rune) bool { return r < ' ' || r == 0x7f || r == '\u2028' || r == '\u2029' }) || !utf8.ValidString(got) {
				t.Fatalf("not escaped: %q", got)
			}
		}
		if len(whole) <= max && Escape(s, max) != whole {
			t.Fatalf("%q fits in %d but came out %q", whole, max, Escape(s, max))
		}
	})
}
