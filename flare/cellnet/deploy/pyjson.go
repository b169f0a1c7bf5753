package deploy

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/flarego/flarego/flare/cellnet/fobs"
	"github.com/flarego/flarego/flare/cellnet/msgpk"
)

// maxJSONDepth bounds the nesting pythonJSON follows; the decoder that
// made the value bounds it already.
const maxJSONDepth = msgpk.DefaultLimitsDepth + 1

// pythonJSON writes a decoded job meta as NVFlare's site writes meta.json,
// json.dump(job_meta, f, indent=4): keys in order, four-space indents,
// ", " and ": " separators, non-ASCII escaped, floats as Python's repr.
func pythonJSON(v any) ([]byte, error) {
	var b bytes.Buffer
	if err := writePython(&b, v, 0); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

func writePython(b *bytes.Buffer, v any, depth int) error {
	if depth > maxJSONDepth {
		return errors.New("nested too deep")
	}
	newline := func(level int) {
		b.WriteByte('\n')
		b.WriteString(strings.Repeat("    ", level))
	}
	switch x := v.(type) {
	case nil:
		b.WriteString("null")
	case bool:
		b.WriteString(strconv.FormatBool(x))
	case int64:
		b.WriteString(strconv.FormatInt(x, 10))
	case uint64:
		b.WriteString(strconv.FormatUint(x, 10))
	case float64:
		b.WriteString(pythonFloat(x))
	case string:
		pythonString(b, x)
	case fobs.Tuple:
		return writePython(b, []any(x), depth)
	case []any:
		if len(x) == 0 {
			b.WriteString("[]")
			return nil
		}
		b.WriteByte('[')
		for i, e := range x {
			if i > 0 {
				b.WriteByte(',')
			}
			newline(depth + 1)
			if err := writePython(b, e, depth+1); err != nil {
				return err
			}
		}
		newline(depth)
		b.WriteByte(']')
	case msgpk.Map:
		if len(x) == 0 {
			b.WriteString("{}")
			return nil
		}
		b.WriteByte('{')
		for i, kv := range x {
			if i > 0 {
				b.WriteByte(',')
			}
			newline(depth + 1)
			switch k := kv.Key.(type) {
			case string:
				pythonString(b, k)
			case int64: // json.dump writes int keys as strings
				pythonString(b, strconv.FormatInt(k, 10))
			default:
				return fmt.Errorf("a key is a %T, not a string", kv.Key)
			}
			b.WriteString(": ")
			if err := writePython(b, kv.Value, depth+1); err != nil {
				return err
			}
		}
		newline(depth)
		b.WriteByte('}')
	default:
		return fmt.Errorf("a %T has no JSON form", v)
	}
	return nil
}

// pythonFloat is repr(x) as json.dump writes it: the shortest digits that
// read back as x, fixed-point for exponents -4 to 15 (with ".0" on whole
// numbers), else d.ddde±XX; NaN and the infinities as Python spells them.
func pythonFloat(x float64) string {
	switch {
	case math.IsNaN(x):
		return "NaN"
	case math.IsInf(x, 1):
		return "Infinity"
	case math.IsInf(x, -1):
		return "-Infinity"
	case x == 0:
		if math.Signbit(x) {
			return "-0.0"
		}
		return "0.0"
	}
	e := strconv.FormatFloat(x, 'e', -1, 64) // d.ddde±XX
	exp, _ := strconv.Atoi(e[strings.IndexByte(e, 'e')+1:])
	if exp < -4 || exp >= 16 {
		return e
	}
	f := strconv.FormatFloat(x, 'f', -1, 64)
	if !strings.ContainsRune(f, '.') {
		f += ".0"
	}
	return f
}

// pythonString writes s as json.dump does with ensure_ascii: the JSON
// escapes \" \\ \n \r \t \b \f, the other control characters, DEL and
// all non-ASCII as \uXXXX (UTF-16, lower-case hex).
func pythonString(b *bytes.Buffer, s string) {
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"':
			b.WriteString(`\"`)
		case r == '\\':
			b.WriteString(`\\`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r == '\b':
			b.WriteString(`\b`)
		case r == '\f':
			b.WriteString(`\f`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(b, `\u%04x`, r)
		case r < utf8.RuneSelf:
			b.WriteByte(byte(r))
		case r <= 0xffff:
			fmt.Fprintf(b, `\u%04x`, r)
		default: // beyond the BMP: a surrogate pair
			r -= 0x10000
			fmt.Fprintf(b, `\u%04x\u%04x`, 0xd800+(r>>10), 0xdc00+(r&0x3ff))
		}
	}
	b.WriteByte('"')
}
