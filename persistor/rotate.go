package persistor

import (
	"bytes"
	"fmt"
	"io"

	"filippo.io/age"
)

// Sealing is what a file is encrypted to: a Fernet key, or age recipients.
type Sealing struct {
	Key        *Key
	Recipients []age.Recipient
}

func (s Sealing) String() string {
	if len(s.Recipients) > 0 {
		return fmt.Sprintf("age, %d recipient(s)", len(s.Recipients))
	}
	return "Fernet"
}

// openSealed reads the sealed file name and opens it with keys (the new
// key too, so a second rotation changes nothing) or ids. It returns the
// file's bytes and the plaintext.
func openSealed(name string, keys []*Key, ids []age.Identity, to Sealing) (raw, plain []byte, err error) {
	f, err := OpenRegular(name)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	head := make([]byte, 64)
	n, _ := io.ReadFull(f, head)
	head = head[:n]
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, nil, err
	}
	switch {
	case IsAge(head):
		plain, err = decryptAgeOpen(f, name, maxModelFileBytes, "a model file", ids)
		return nil, plain, err
	case IsToken(head):
		raw, err = readOpen(f, name, maxModelFileBytes, "a model file")
		if err != nil {
			return nil, nil, err
		}
		all := keys
		if to.Key != nil {
			all = append([]*Key{to.Key}, keys...)
		}
		if len(all) == 0 {
			return nil, nil, fmt.Errorf("reading %s: file is a Fernet token and no key was given (--old KEYFILE)", name)
		}
		plain, err = DecryptFrom(bytes.NewReader(raw), int64(len(raw)), NoTTL, all...)
		if err != nil {
			return nil, nil, fmt.Errorf("decrypting %s: %w", name, err)
		}
		return raw, plain, nil
	}
	return nil, nil, fmt.Errorf("%s is not encrypted (neither a Fernet token nor an age file); encrypt it instead", name)
}

// CheckOpens reports whether RotateFile(name, keys, ids, to) would find a
// key that opens name, writing nothing.
func CheckOpens(name string, keys []*Key, ids []age.Identity, to Sealing) error {
	_, _, err := openSealed(name, keys, ids, to)
	return err
}

// RotateFile re-encrypts the sealed file name in place and atomically: it
// is opened with one of keys or ids and written again under to. A Fernet
// token re-encrypted under a Fernet key keeps its timestamp, as
// MultiFernet.rotate does.
func RotateFile(name string, keys []*Key, ids []age.Identity, to Sealing) error {
	raw, plain, err := openSealed(name, keys, ids, to)
	if err != nil {
		return err
	}
	write := func(w io.Writer) error { _, err := w.Write(plain); return err }
	if len(to.Recipients) > 0 {
		return WriteAgeFile(name, to.Recipients, write)
	}
	if to.Key == nil {
		return fmt.Errorf("rotating %s: no new key or recipient given", name)
	}
	if raw != nil {
		tok, err := rotate(raw, to.Key, keys...)
		if err != nil {
			return fmt.Errorf("rotating %s: %w", name, err)
		}
		return WriteFileAtomic(name, 0o600, func(w io.Writer) error { _, err := w.Write(tok); return err })
	}
	return WriteEncrypted(name, to.Key, write)
}
