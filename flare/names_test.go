package flare

import (
	"strings"
	"testing"
)

func TestCheckNameAndLogSafe(t *testing.T) {
	for _, ok := range []string{"site-1", "example_project", "admin@nvidia.com", "a.b", strings.Repeat("x", MaxNameBytes)} {
		if err := CheckName("name", ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "site 1", "site-1\n", "../x", "a/b", "é", "x\x00", strings.Repeat("x", MaxNameBytes+1)} {
		err := CheckName("name", bad)
		if err == nil {
			t.Errorf("%q accepted", bad)
		} else if strings.ContainsAny(err.Error(), "\n\x00") {
			t.Errorf("%q: the error holds it raw: %q", bad, err)
		}
	}
	for in, want := range map[string]string{
		"plain":           "plain",
		"two\nlines\r":    `two\nlines\r`,
		"esc\x1b[2J":      `esc\x1b[2J`,
		"bad\xffutf8":     `bad\xffutf8`,
		`back\slash`:      `back\\slash`,
		"snowman ☃ stays": "snowman ☃ stays",
	} {
		if got := LogSafe(in); got != want {
			t.Errorf("LogSafe(%q) = %q, want %q", in, got, want)
		}
	}
	long := LogSafe(strings.Repeat("y", 1<<20))
	if len(long) > maxLogBytes+32 || !strings.HasSuffix(long, "...(1048576 bytes)") {
		t.Errorf("LogSafe of 1 MiB: %d bytes, ends %q", len(long), long[len(long)-20:])
	}
}
