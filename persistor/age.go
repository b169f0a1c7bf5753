package persistor

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"filippo.io/age"
	"filippo.io/age/armor"
)

// Owner keys: models encrypted to the public keys (age recipients) of
// their owners, so that whoever stores them (the FL server) cannot read
// them. The files are ordinary age files (https://age-encryption.org/v1):
// `age -d -i owner.key` opens them.

// ageMagic starts every binary age file; ageArmorMagic an ASCII-armored one.
const (
	ageMagic      = "age-encryption.org/v1\n"
	ageArmorMagic = armor.Header
)

// maxIdentityFileBytes bounds an identity or recipients file: a line is
// about 75 bytes, so this holds hundreds of keys.
const maxIdentityFileBytes = 64 << 10

// IsAge reports whether data starts like an age file (binary or armored).
func IsAge(data []byte) bool {
	data = bytes.TrimLeft(data, " \t\r\n")
	return bytes.HasPrefix(data, []byte(ageMagic)) || bytes.HasPrefix(data, []byte(ageArmorMagic))
}

// GenerateIdentity returns a new X25519 identity, the kind age-keygen
// makes (readable by every age release).
func GenerateIdentity() (*age.X25519Identity, error) { return age.GenerateX25519Identity() }

// IdentityFile is the text age-keygen writes for id: a creation date,
// the public key as a comment, then the secret key.
func IdentityFile(id *age.X25519Identity, now time.Time) string {
	return fmt.Sprintf("# created: %s\n# public key: %s\n%s\n", now.UTC().Format(time.RFC3339), id.Recipient(), id)
}

// ReadIdentityFile reads the age identities (AGE-SECRET-KEY-1… lines) of
// an identity file as age-keygen writes it. Errors name the file, never a
// key.
func ReadIdentityFile(name string) ([]age.Identity, error) {
	data, err := ReadRegular(name, maxIdentityFileBytes, "an identity file")
	if err != nil {
		return nil, fmt.Errorf("reading identity: %w", err)
	}
	ids, err := age.ParseIdentities(bytes.NewReader(data))
	if err != nil {
		// age's parse errors carry a line number and the kind of fault,
		// never the key text.
		return nil, fmt.Errorf("reading identity: %s: %v", name, err)
	}
	return ids, nil
}

// ParseRecipients parses age recipients (age1… public keys) given one per
// string; blank strings and "#" comments are skipped. what names where
// they came from in errors.
func ParseRecipients(what string, list []string) ([]age.Recipient, error) {
	var out []age.Recipient
	for i, s := range list {
		s = strings.TrimSpace(s)
		if s == "" || strings.HasPrefix(s, "#") {
			continue
		}
		if strings.HasPrefix(strings.ToUpper(s), "AGE-SECRET-KEY-") {
			// A secret key where a public one belongs: say so without
			// repeating it.
			return nil, fmt.Errorf("%s: recipient %d is a secret key (AGE-SECRET-KEY-…), not a public key (age1…); give the recipient that 'flarego keygen --age' printed", what, i+1)
		}
		rs, err := age.ParseRecipients(strings.NewReader(s))
		if err != nil {
			return nil, fmt.Errorf("%s: recipient %d (%.12s…): %v", what, i+1, s, err)
		}
		out = append(out, rs...)
	}
	return out, nil
}

// ReadRecipientsFile reads a recipients file (one age1… key per line, as
// `age -R` takes).
func ReadRecipientsFile(name string) ([]age.Recipient, error) {
	data, err := ReadRegular(name, maxIdentityFileBytes, "a recipients file")
	if err != nil {
		return nil, fmt.Errorf("reading recipients: %w", err)
	}
	rs, err := ParseRecipients(name, strings.Split(string(data), "\n"))
	if err != nil {
		return nil, err
	}
	if len(rs) == 0 {
		return nil, fmt.Errorf("reading recipients: %s holds no age1… recipient", name)
	}
	return rs, nil
}

// WriteAgeFile writes what write produces, encrypted to recipients, to
// name atomically (mode 0600): only ciphertext reaches the disk, and a
// crash leaves the old file or the new one.
func WriteAgeFile(name string, recipients []age.Recipient, write func(io.Writer) error) error {
	if len(recipients) == 0 {
		return fmt.Errorf("writing %s: no age recipient given", name)
	}
	return WriteFileAtomic(name, 0o600, func(w io.Writer) error {
		bw := bufio.NewWriterSize(w, 256<<10)
		aw, err := age.Encrypt(bw, recipients...)
		if err != nil {
			return err
		}
		if err := write(aw); err != nil {
			return err
		}
		if err := aw.Close(); err != nil {
			return err
		}
		return bw.Flush()
	})
}

// decryptAgeOpen decrypts the age file f (binary or armored) with ids,
// reading at most max plaintext bytes.
func decryptAgeOpen(f *os.File, name string, max int64, what string, ids []age.Identity) ([]byte, error) {
	if len(ids) == 0 {
		return nil, fmt.Errorf("reading %s: file is encrypted to age recipients and no identity was given (--identity FILE, the owner's key)", name)
	}
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	// Ciphertext is the plaintext plus a header and 16 bytes per 64 KiB.
	if st.Size() > max+max/4096+(4<<20) {
		return nil, tooLarge(name, st.Size(), max, what)
	}
	br := bufio.NewReader(f)
	var src io.Reader = br
	if head, _ := br.Peek(len(ageArmorMagic) + 16); bytes.HasPrefix(bytes.TrimLeft(head, " \t\r\n"), []byte(ageArmorMagic)) {
		src = armor.NewReader(br)
	}
	r, err := age.Decrypt(src, ids...)
	if err != nil {
		var nm *age.NoIdentityMatchError
		if errors.As(err, &nm) {
			return nil, fmt.Errorf("decrypting %s: %w: the identity given is not one the file was encrypted to (wrong owner key)", name, ErrWrongIdentity)
		}
		return nil, fmt.Errorf("decrypting %s: %v", name, err)
	}
	var buf bytes.Buffer
	if st.Size() < max {
		buf.Grow(int(st.Size()))
	}
	n, err := io.Copy(&buf, io.LimitReader(r, max+1))
	if err != nil {
		return nil, fmt.Errorf("decrypting %s: %v", name, err)
	}
	if n > max {
		return nil, fmt.Errorf("decrypting %s: plaintext is larger than %s may be (at most %d bytes)", name, what, max)
	}
	return buf.Bytes(), nil
}

// ErrWrongIdentity reports an age file none of the given identities opens.
var ErrWrongIdentity = errors.New("no identity matches")

// ReadParamsRecipients reads the "recipients" entry of a
// secret_run_params.json (next to "key"): an age recipient or a list of
// them. A file that is not JSON, or has no such entry, gives none. Errors
// name the file, never the key beside it.
func ReadParamsRecipients(name string) ([]age.Recipient, error) {
	data, err := ReadRegular(name, maxKeyFileBytes, "a key file")
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("reading recipients: %w", err)
	}
	if !bytes.HasPrefix(bytes.TrimSpace(data), []byte("{")) {
		return nil, nil
	}
	var params struct {
		Recipients json.RawMessage `json:"recipients"`
	}
	if err := json.Unmarshal(data, &params); err != nil {
		return nil, fmt.Errorf("reading recipients: %s: malformed JSON: %v", name, jsonErrorWithoutInput(err))
	}
	if len(params.Recipients) == 0 || string(params.Recipients) == "null" {
		return nil, nil
	}
	var list []string
	if err := json.Unmarshal(params.Recipients, &list); err != nil {
		var one string
		if json.Unmarshal(params.Recipients, &one) != nil {
			return nil, fmt.Errorf("reading recipients: %s: \"recipients\" is neither a string nor a list of strings", name)
		}
		list = []string{one}
	}
	rs, err := ParseRecipients(name+": \"recipients\"", list)
	if err != nil {
		return nil, fmt.Errorf("reading recipients: %w", err)
	}
	if len(rs) == 0 {
		return nil, fmt.Errorf("reading recipients: %s: \"recipients\" is empty", name)
	}
	return rs, nil
}

// IsAgeFile reports whether the named regular file is an age file.
func IsAgeFile(path string) (bool, error) {
	head, err := fileHead(path)
	return IsAge(head), err
}

// fileHead is the first 64 bytes of the named regular file (fewer if it
// is shorter): enough to tell a token, an age file and a .pt apart.
func fileHead(path string) ([]byte, error) {
	f, err := OpenRegular(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	head := make([]byte, 64)
	n, _ := io.ReadFull(f, head)
	return head[:n], nil
}
