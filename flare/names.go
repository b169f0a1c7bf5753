package flare

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/flarego/flarego/internal/logsafe"
)

// MaxNameBytes bounds a name a peer gives itself or its project. NVFlare's
// provisioned names (site-1, example_project, admin@nvidia.com) are far
// shorter.
const MaxNameBytes = 128

// CheckName refuses a peer-supplied name that is empty, longer than
// MaxNameBytes, or holds anything but letters, digits and "-_.@": such a
// name ends up in log lines, file names and console tables, where a
// newline or an escape sequence would forge or garble them. what says
// which name it is ("client name").
func CheckName(what, name string) error {
	if name == "" {
		return fmt.Errorf("%s is empty", what)
	}
	if len(name) > MaxNameBytes {
		return fmt.Errorf("%s is %d bytes long (at most %d)", what, len(name), MaxNameBytes)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || ('0' <= c && c <= '9') || strings.IndexByte("-_.@", c) >= 0 {
			continue
		}
		return fmt.Errorf("%s %s holds %q (letters, digits and -_.@ only)", what, LogSafe(name), c)
	}
	return nil
}

// maxLogBytes bounds one peer-supplied value in a log line.
const maxLogBytes = 200

// LogSafe makes a peer-supplied string fit for a log line: control and
// non-printable characters (newlines above all, which would forge log
// lines) are escaped as Go does in quoted strings, and a string whose
// escaped form is longer than maxLogBytes is cut, saying how long the
// whole was.
func LogSafe(s string) string { return escapeCut(s, maxLogBytes) }

// escapeCut is LogSafe with its own bound: the result, the note of what
// was cut included, is at most max bytes (max ≥ 32).
func escapeCut(s string, max int) string { return logsafe.Escape(s, max) }

// LogCut shortens a peer's string before it is quoted (%q, which escapes)
// into a message.
func LogCut(s string) string {
	const n = 64
	if len(s) <= n {
		return s
	}
	i := n
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i] + "…"
}

// LogSafeErr is LogSafe for an error, whose text may quote peer input.
func LogSafeErr(err error) string { return LogSafe(err.Error()) }
