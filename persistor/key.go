package persistor

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/fernet/fernet-go"
)

// A Key is a Fernet key: 16 bytes that sign and 16 bytes that encrypt.
// Its String and GoString methods never reveal it.
type Key struct {
	k fernet.Key
}

// ErrNoKey reports that no key file was found where one was looked for.
var ErrNoKey = errors.New("no key file found")

// GenerateKey returns a new random key.
func GenerateKey() (*Key, error) {
	k := new(Key)
	if err := k.k.Generate(); err != nil {
		return nil, fmt.Errorf("generating key: %w", err)
	}
	return k, nil
}

// Encode returns the key as Fernet.generate_key() writes it: 44 characters
// of padded URL-safe base64.
func (k *Key) Encode() string { return k.k.Encode() }

func (k *Key) String() string   { return "persistor.Key(redacted)" }
func (k *Key) GoString() string { return k.String() }

func (k *Key) signing() []byte    { return k.k[:16] }
func (k *Key) encryption() []byte { return k.k[16:] }

// ParseKey parses a Fernet key exactly as cryptography's Fernet(key) does:
// 32 bytes in padded base64, URL-safe or standard alphabet, whitespace
// anywhere ignored. Unlike fernet-go it refuses hex keys, which Python refuses.
// Errors never include the key text.
func ParseKey(s string) (*Key, error) {
	s = string(appendNormalized(nil, []byte(s)))
	if s == "" {
		return nil, errors.New("key is empty")
	}
	b, err := base64.URLEncoding.DecodeString(s)
	if err != nil {
		return nil, errors.New("key is not padded base64 (want 44 characters as Fernet.generate_key() writes)")
	}
	if len(b) != 32 {
		return nil, fmt.Errorf("key decodes to %d bytes, want 32", len(b))
	}
	k := new(Key)
	copy(k.k[:], b)
	return k, nil
}

// ReadKeyFile reads a key from a raw key file (with or without a trailing
// newline) or from a secret_run_params.json ({"key": "..."}) as FCP mounts it.
// Errors name the file and what was wrong, never the key.
func ReadKeyFile(name string) (*Key, error) {
	data, err := ReadRegular(name, maxKeyFileBytes, "a key file")
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("reading key: %s: %w", name, ErrNoKey)
		}
		return nil, fmt.Errorf("reading key: %w", err)
	}
	text := string(bytes.TrimSpace(data))
	if strings.HasPrefix(text, "{") {
		var params map[string]any
		if err := json.Unmarshal(data, &params); err != nil {
			return nil, fmt.Errorf("reading key: %s: malformed JSON: %v", name, jsonErrorWithoutInput(err))
		}
		v, ok := params["key"]
		if !ok {
			return nil, fmt.Errorf("reading key: %s: no \"key\" entry", name)
		}
		str, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("reading key: %s: \"key\" is not a string", name)
		}
		text = str
	}
	k, err := ParseKey(text)
	if err != nil {
		return nil, fmt.Errorf("reading key: %s: %v", name, err)
	}
	return k, nil
}

// jsonErrorWithoutInput keeps JSON syntax errors from echoing the file,
// which holds the secret.
func jsonErrorWithoutInput(err error) string {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("syntax error at byte %d", se.Offset)
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return "top level is not an object"
	}
	return "not valid JSON"
}
