package persistor

import (
	"bytes"
	"crypto/aes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

// specVectors loads one of the Fernet spec files that ship inside the
// fernet-go module.
func specVectors(t *testing.T, name string) []struct {
	Secret, Src, Token, Desc string
	IV                       [aes.BlockSize]byte
	Now                      time.Time
	TTLSec                   int `json:"ttl_sec"`
} {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/fernet/fernet-go").Output()
	if err != nil {
		t.Fatalf("locating fernet-go module: %v", err)
	}
	data, err := os.ReadFile(filepath.Join(strings.TrimSpace(string(out)), name))
	if err != nil {
		t.Fatal(err)
	}
	var v []struct {
		Secret, Src, Token, Desc string
		IV                       [aes.BlockSize]byte
		Now                      time.Time
		TTLSec                   int `json:"ttl_sec"`
	}
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatal(err)
	}
	if len(v) == 0 {
		t.Fatalf("%s holds no vectors", name)
	}
	return v
}

func mustKey(t testing.TB, s string) *Key {
	t.Helper()
	k, err := ParseKey(s)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestSpecGenerateStreaming(t *testing.T) {
	for _, v := range specVectors(t, "generate.json") {
		k := mustKey(t, v.Secret)
		var buf bytes.Buffer
		e, err := newEncrypterAt(&buf, k, v.Now, v.IV[:])
		if err != nil {
			t.Fatal(err)
		}
		e.Write([]byte(v.Src))
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
		if buf.String() != v.Token {
			t.Errorf("%s: streaming encrypter wrote %s, want %s", v.Desc, buf.String(), v.Token)
		}
	}
}

func TestSpecVerify(t *testing.T) {
	for _, v := range specVectors(t, "verify.json") {
		k := mustKey(t, v.Secret)
		ttl := time.Duration(v.TTLSec) * time.Second
		got, err := decryptAt([]byte(v.Token), ttl, v.Now, []*Key{k})
		if err != nil || string(got) != v.Src {
			t.Errorf("%s: got %q, %v; want %q", v.Desc, got, err, v.Src)
		}
		raw, _ := decodeToken([]byte(v.Token))
		got, err = openInPlace(raw, []*Key{k})
		if err != nil || string(got) != v.Src {
			t.Errorf("%s (streaming path): got %q, %v", v.Desc, got, err)
		}
	}
}

func TestSpecInvalid(t *testing.T) {
	for _, v := range specVectors(t, "invalid.json") {
		k := mustKey(t, v.Secret)
		ttl := time.Duration(v.TTLSec) * time.Second
		if got, err := decryptAt([]byte(v.Token), ttl, v.Now, []*Key{k}); err == nil {
			t.Errorf("%s: accepted, returned %q", v.Desc, got)
		}
	}
}

func readFixture(t testing.TB, parts ...string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(append([]string{"..", "testdata"}, parts...)...))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestPythonTokens(t *testing.T) {
	k := mustKey(t, string(readFixture(t, "fernet", "key.txt")))
	k2 := mustKey(t, string(readFixture(t, "fernet", "key2.txt")))
	literal := map[string]string{"hello_nl": "hello fernet", "fixed_t1700000000_iv0": "hello fernet",
		"future_30s": "future30", "future_120s": "future", "past_1h": "old"}
	for _, name := range []string{"empty", "block16", "binary256", "utf8", "hello", "hello_nl", "future_30s", "future_120s", "past_1h", "fixed_t1700000000_iv0"} {
		tok := readFixture(t, "fernet", "python-tokens", name+".tok")
		want := []byte(literal[name])
		if _, lit := literal[name]; !lit {
			want = readFixture(t, "fernet", "python-tokens", name+".plain")
		}
		got, err := Decrypt(tok, NoTTL, k)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s: got %q, want %q", name, got, want)
		}
		// The same through the one-buffer path.
		got2, err := DecryptFrom(bytes.NewReader(tok), int64(len(tok)), NoTTL, k)
		if err != nil || !bytes.Equal(got, got2) {
			t.Errorf("%s: DecryptFrom gave %q, %v", name, got2, err)
		}
	}
	rot := readFixture(t, "fernet", "python-tokens", "rotated_to_key2.tok")
	if _, err := Decrypt(rot, NoTTL, k); !errors.Is(err, ErrInvalidToken) {
		t.Errorf("rotated token opened with the old key: %v", err)
	}
	if _, err := Decrypt(rot, NoTTL, k, k2); err != nil {
		t.Errorf("rotated token with both keys: %v", err)
	}
}

func TestTTLMatchesPython(t *testing.T) {
	k := mustKey(t, string(readFixture(t, "fernet", "key.txt")))
	tok := readFixture(t, "fernet", "python-tokens", "fixed_t1700000000_iv0.tok")
	signed := time.Unix(1700000000, 0)
	cases := []struct {
		now  time.Time
		ttl  time.Duration
		want error
	}{
		{signed.Add(10 * time.Second), NoTTL, nil},
		{signed.Add(500 * time.Millisecond), 0, nil},                          // ttl=0: same second is valid
		{signed.Add(time.Second), 0, ErrTokenExpired},                         // one second later is not
		{signed.Add(60*time.Second + 900*time.Millisecond), time.Minute, nil}, // age == TTL is valid in Python
		{signed.Add(61 * time.Second), time.Minute, ErrTokenExpired},
		{signed.Add(-60 * time.Second), time.Hour, nil}, // 60 s ahead: within skew
		{signed.Add(-61 * time.Second), time.Hour, ErrTokenFromFuture},
		{signed.Add(-time.Hour), NoTTL, nil}, // future tokens pass without a TTL, as in Python
	}
	for i, c := range cases {
		got, err := decryptAt(tok, c.ttl, c.now, []*Key{k})
		if !errors.Is(err, c.want) || (c.want == nil && err != nil) {
			t.Errorf("case %d: err %v, want %v", i, err, c.want)
		}
		if err == nil && string(got) != "hello fernet" {
			t.Errorf("case %d: got %q", i, got)
		}
	}
}

func TestTokenTextForms(t *testing.T) {
	k := mustKey(t, string(readFixture(t, "fernet", "key.txt")))
	tok := strings.TrimSpace(string(readFixture(t, "fernet", "python-tokens", "binary256.tok")))
	raw, _ := base64.URLEncoding.DecodeString(tok)
	std := base64.StdEncoding.EncodeToString(raw)
	spaced := tok[:10] + " \n" + tok[10:40] + "\t" + tok[40:] + "\n"
	for name, form := range map[string]string{"standard alphabet": std, "embedded whitespace": spaced, "trailing newline": tok + "\n"} {
		if _, err := Decrypt([]byte(form), NoTTL, k); err != nil {
			t.Errorf("%s: %v (Python accepts it)", name, err)
		}
		// The streaming path, with reads split at every possible place.
		for _, r := range []io.Reader{strings.NewReader(form), iotest.OneByteReader(strings.NewReader(form)), iotest.HalfReader(strings.NewReader(form))} {
			if _, err := DecryptFrom(r, 0, NoTTL, k); err != nil {
				t.Errorf("%s (streaming): %v", name, err)
			}
		}
	}
	for name, form := range map[string]string{
		"trailing junk":    tok + "AAAA",
		"truncated":        tok[:len(tok)-8],
		"one char flipped": tok[:50] + string(rune(tok[50]^1)) + tok[51:],
		"not base64":       "%%%%" + tok[4:],
		"empty":            "",
		"unpadded":         strings.TrimRight(tok, "="),
	} {
		if _, err := Decrypt([]byte(form), NoTTL, k); !errors.Is(err, ErrInvalidToken) {
			t.Errorf("%s: err %v, want ErrInvalidToken", name, err)
		}
		if _, err := DecryptFrom(iotest.OneByteReader(strings.NewReader(form)), 0, NoTTL, k); !errors.Is(err, ErrInvalidToken) {
			t.Errorf("%s (streaming): err %v, want ErrInvalidToken", name, err)
		}
	}
}

// A token with a valid signature over an empty ciphertext makes fernet-go
// panic; only a key holder can make one, but it must still be an error.
func TestEmptyCiphertextIsAnError(t *testing.T) {
	k := mustKey(t, string(readFixture(t, "fernet", "key.txt")))
	raw := make([]byte, headerLen)
	raw[0] = tokenVersion
	m := newMAC(k)
	m.Write(raw)
	raw = m.Sum(raw)
	tok := base64.URLEncoding.EncodeToString(raw)
	if _, err := Decrypt([]byte(tok), NoTTL, k); !errors.Is(err, ErrInvalidToken) {
		t.Fatalf("err %v, want ErrInvalidToken", err)
	}
}

func TestEncryptDecryptSizes(t *testing.T) {
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{0, 1, 15, 16, 17, encChunk - 1, encChunk, encChunk + 1, smallToken, smallToken + 1, 3*encChunk + 5} {
		msg := bytes.Repeat([]byte{byte(n)}, n)
		tok, err := Encrypt(msg, k)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Decrypt(tok, time.Minute, k)
		if err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("size %d: round trip failed: %v", n, err)
		}
		got, err = DecryptFrom(bytes.NewReader(tok), 0, NoTTL, k)
		if err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("size %d: DecryptFrom failed: %v", n, err)
		}
	}
}

func TestRotateKeepsTimestamp(t *testing.T) {
	k := mustKey(t, string(readFixture(t, "fernet", "key.txt")))
	k2 := mustKey(t, string(readFixture(t, "fernet", "key2.txt")))
	tok := readFixture(t, "fernet", "python-tokens", "fixed_t1700000000_iv0.tok")
	rot, err := rotate(tok, k2, k)
	if err != nil {
		t.Fatal(err)
	}
	got, err := decryptAt(rot, time.Minute, time.Unix(1700000010, 0), []*Key{k2})
	if err != nil || string(got) != "hello fernet" {
		t.Fatalf("rotated token: %q, %v", got, err)
	}
	if _, err := Decrypt(rot, NoTTL, k); err == nil {
		t.Fatal("rotated token still opens with the old key")
	}
}

func TestKeyParsing(t *testing.T) {
	good := strings.TrimSpace(string(readFixture(t, "fernet", "key.txt")))
	raw, _ := base64.URLEncoding.DecodeString(good)
	for name, s := range map[string]string{
		"plain":             good,
		"trailing newline":  good + "\n",
		"inner spaces":      good[:10] + " " + good[10:],
		"standard alphabet": base64.StdEncoding.EncodeToString(raw),
	} {
		if _, err := ParseKey(s); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	for name, s := range map[string]string{
		"empty":    "",
		"hex":      strings.Repeat("ab", 32),
		"unpadded": strings.TrimRight(good, "="),
		"short":    base64.URLEncoding.EncodeToString(raw[:16]),
	} {
		_, err := ParseKey(s)
		if err == nil {
			t.Errorf("%s: accepted", name)
		} else if s != "" && strings.Contains(err.Error(), s) {
			t.Errorf("%s: error repeats the key: %v", name, err)
		}
	}
	k := mustKey(t, good)
	for _, s := range []string{k.String(), k.GoString()} {
		if strings.Contains(s, good) {
			t.Fatal("formatting a key reveals it")
		}
	}
}

func TestReadKeyFile(t *testing.T) {
	dir := t.TempDir()
	good := strings.TrimSpace(string(readFixture(t, "fernet", "key.txt")))
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, p := range []string{
		write("raw", good),
		write("raw-nl", good+"\n"),
		write("params.json", `{"key": "`+good+`"}`),
	} {
		if _, err := ReadKeyFile(p); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
	for _, c := range []struct{ name, content, want string }{
		{"bad.json", `{"key": "` + good, "malformed JSON"},
		{"nokey.json", `{"other": 1}`, `no "key" entry`},
		{"numkey.json", `{"key": 5}`, "not a string"},
		{"garbage", "not a key at all", "decodes to 9 bytes"},
		{"bad-alphabet", "!!!!" + good[4:], "not padded base64"},
	} {
		p := write(c.name, c.content)
		_, err := ReadKeyFile(p)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: err %v, want it to name the file and say %q", c.name, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), good) {
			t.Errorf("%s: error reveals the key", c.name)
		}
	}
	if _, err := ReadKeyFile(filepath.Join(dir, "missing")); !errors.Is(err, ErrNoKey) {
		t.Errorf("missing file: %v, want ErrNoKey", err)
	}
}
