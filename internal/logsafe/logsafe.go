// Package logsafe makes text that came from a peer (a name, a command's
// argument, an error that quotes either) fit for one log line or one
// message: it cannot start a forged line, move the terminal or make the
// line unbounded. The server and the admin console both use it, so that
// every log escapes the same way.
package logsafe

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Escape returns s with control and non-printable characters escaped as
// in Go's quoted strings (`\n`, `\x1b`, `\u2028`), backslashes doubled and
// bytes that are not UTF-8 as `\xff`. Text whose escaped form fits in max
// bytes comes out whole; longer text is cut at a character and ends with
// "...(N bytes)", N the length of s, all of it at most max bytes (where
// max leaves room for that note: 32 bytes is room for any length).
func Escape(s string, max int) string { return escape(s, max, false) }

// Quote is Escape for a value written among others separated by spaces
// (a command and its arguments): a value that is empty or holds a space,
// a double quote or anything Escape changes is put in double quotes, with
// its double quotes escaped; the quotes count in max.
func Quote(s string, max int) string {
	if s != "" && len(s) <= max && !strings.ContainsAny(s, ` "`) && escape(s, max, false) == s {
		return s
	}
	return `"` + escape(s, max-2, true) + `"`
}

func escape(s string, max int, quote bool) string {
	note := "...(" + strconv.Itoa(len(s)) + " bytes)"
	var b strings.Builder
	cut := 0 // the longest whole text that leaves room for the note
	for i, r := range s {
		var part string
		switch {
		case r == utf8.RuneError && !strings.HasPrefix(s[i:], "\uFFFD"):
			part = fmt.Sprintf(`\x%02x`, s[i])
		case r == '\\':
			part = `\\`
		case r == '"' && quote:
			part = `\"`
		case strconv.IsPrint(r):
			part = s[i : i+utf8.RuneLen(r)]
		default:
			q := strconv.QuoteRune(r)
			part = q[1 : len(q)-1]
		}
		if b.Len()+len(part) > max {
			return b.String()[:cut] + note
		}
		b.WriteString(part)
		if b.Len() <= max-len(note) {
			cut = b.Len()
		}
	}
	return b.String()
}
