package persistor

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"filippo.io/age"
)

// ErrPlaintextRefused reports a save that would have written plaintext
// weights because no key was given.
var ErrPlaintextRefused = errors.New("no key: refusing to write plaintext weights (allow it explicitly to do so)")

// SecuredPersistor is the server's model store, the Go side of the seed's
// pt_secured_model_persistor.PTSecuredModelPersistor. It fixes the seed's
// flaws: the .pt is built and encrypted in memory and written atomically, so
// a crash leaves the old file or the new one, never plaintext; and without a
// key it refuses to save unless AllowPlaintext is set.
type SecuredPersistor struct {
	// Path is the global model file, e.g. /output/model_parameters.pt.enc.
	Path string
	// BestPath is the best model's file; empty means "best_" + base of Path.
	BestPath string
	// Key encrypts what is saved and decrypts what is loaded.
	Key *Key
	// Recipients, when set, are the model owners' public keys: Save
	// encrypts to them (an age file) instead of with Key, so the holder of
	// this persistor needs no secret to save and cannot read what it
	// saved. What was saved is kept in memory for Get.
	Recipients []age.Recipient
	// Identities open age-encrypted files given to Load (Preload) or Get.
	Identities []age.Identity
	// AllowPlaintext lets Save write a plain .pt when Key is nil.
	AllowPlaintext bool

	// The initial model comes from the first of these that is set.
	Preload string                     // a checkpoint file, plain or encrypted
	Initial *StateDict                 // a state dict held in memory
	Init    func() (*StateDict, error) // a fresh initialisation (e.g. from a model spec)

	// ModelName goes into train_conf ({"train": {"model": ModelName}}).
	ModelName string

	mu   sync.Mutex
	held map[string]*Checkpoint // what was saved to Recipients, by path
}

// Load returns the initial model.
func (p *SecuredPersistor) Load() (*Checkpoint, error) {
	switch {
	case p.Preload != "":
		c, err := ReadCheckpointFileWith(p.Preload, p.Key, p.Identities)
		if err != nil {
			return nil, fmt.Errorf("loading initial model: %w", err)
		}
		return c, nil
	case p.Initial != nil:
		return &Checkpoint{Model: p.Initial, ModelName: p.ModelName}, nil
	case p.Init != nil:
		sd, err := p.Init()
		if err != nil {
			return nil, fmt.Errorf("initialising model: %w", err)
		}
		return &Checkpoint{Model: sd, ModelName: p.ModelName}, nil
	}
	return nil, errors.New("loading initial model: no preload file, state dict or initialiser given")
}

// Save writes c as the global model.
func (p *SecuredPersistor) Save(c *Checkpoint) error { return p.save(p.Path, c) }

// Last reads the global model an earlier Save left at Path (perhaps in
// another process): nil and no error when there is no file. A model sealed
// to Recipients opens only with one of Identities.
func (p *SecuredPersistor) Last() (*Checkpoint, string, error) {
	if _, err := os.Lstat(p.Path); errors.Is(err, os.ErrNotExist) {
		return nil, "", nil
	}
	if sealed, err := IsAgeFile(p.Path); err != nil {
		return nil, p.Path, err
	} else if sealed && len(p.Identities) == 0 {
		return nil, p.Path, fmt.Errorf("%s is sealed to the model owners' recipients: this server holds no identity to read it", p.Path)
	}
	c, err := ReadCheckpointFileWith(p.Path, p.Key, p.Identities)
	if err != nil {
		return nil, p.Path, err
	}
	return c, p.Path, nil
}

// saveBest writes c as the best model so far.
func (p *SecuredPersistor) saveBest(c *Checkpoint) error { return p.save(p.bestPath(), c) }

func (p *SecuredPersistor) bestPath() string {
	if p.BestPath != "" {
		return p.BestPath
	}
	dir, base := filepath.Split(p.Path)
	return filepath.Join(dir, "best_"+base)
}

func (p *SecuredPersistor) save(path string, c *Checkpoint) error {
	if c.ModelName == "" {
		cc := *c
		cc.ModelName = p.ModelName
		c = &cc
	}
	prefix := ptPrefix(path)
	write := func(w io.Writer) error { return WritePT(w, c, PTOptions{Prefix: prefix}) }
	if len(p.Recipients) > 0 {
		if err := WriteAgeFile(path, p.Recipients, write); err != nil {
			return err
		}
		p.mu.Lock()
		if p.held == nil {
			p.held = map[string]*Checkpoint{}
		}
		p.held[path] = c
		p.mu.Unlock()
		return nil
	}
	if p.Key == nil {
		if !p.AllowPlaintext {
			return fmt.Errorf("saving %s: %w", path, ErrPlaintextRefused)
		}
		return WriteFileAtomic(path, 0o600, write)
	}
	return WriteEncrypted(path, p.Key, write)
}

// ptPrefix is the archive folder torch would use: the base name without
// extensions.
func ptPrefix(path string) string {
	base := filepath.Base(path)
	if i := strings.IndexByte(base, '.'); i > 0 {
		base = base[:i]
	}
	if base == "" {
		return "archive"
	}
	return base
}

// Get reads a stored model by its inventory name ("global" or "best").
func (p *SecuredPersistor) Get(name string) (*Checkpoint, error) {
	var path string
	switch name {
	case "global":
		path = p.Path
	case "best":
		path = p.bestPath()
	default:
		return nil, fmt.Errorf("no model named %q (have global, best)", name)
	}
	p.mu.Lock()
	c := p.held[path]
	p.mu.Unlock()
	if c != nil {
		return c, nil
	}
	return ReadCheckpointFileWith(path, p.Key, p.Identities)
}

// modelDescriptor describes one stored model, as NVFlare's inventory does.
type modelDescriptor struct {
	Name      string
	Location  string
	Encrypted bool
	Size      int64
	ModTime   time.Time
}

// inventory lists the stored models that exist.
func (p *SecuredPersistor) inventory() ([]modelDescriptor, error) {
	var out []modelDescriptor
	for _, m := range []struct{ name, path string }{{"global", p.Path}, {"best", p.bestPath()}} {
		st, err := os.Stat(m.path)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		enc, err := IsSealedFile(m.path)
		if err != nil {
			return nil, err
		}
		out = append(out, modelDescriptor{m.name, m.path, enc, st.Size(), st.ModTime()})
	}
	return out, nil
}

// tokenPrefix starts every Fernet token of this era (version 0x80 and a
// timestamp below 2^32 seconds).
const tokenPrefix = "gAAAAA"

// IsTokenFile reports whether the named file holds a Fernet token. Only a
// regular file can hold a model: opening a FIFO would wait for a writer
// forever, and a device could be read without end.
func IsTokenFile(path string) (bool, error) {
	f, err := OpenRegular(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	return isTokenHead(f), nil
}

// isTokenHead reports whether f, read from its current offset, starts
// like a Fernet token.
func isTokenHead(f io.Reader) bool {
	head := make([]byte, len(tokenPrefix))
	n, _ := io.ReadFull(f, head)
	return IsToken(head[:n])
}

// IsToken reports whether data looks like a Fernet token rather than a .pt.
func IsToken(data []byte) bool {
	return bytes.HasPrefix(bytes.TrimLeft(data, " \t\r\n"), []byte(tokenPrefix))
}

// ReadCheckpointFile reads a checkpoint that is either a Fernet token of a
// .pt (decrypted in memory with k) or a plain .pt. An encrypted file without
// a key is an error.
func ReadCheckpointFile(path string, k *Key) (*Checkpoint, error) {
	return ReadCheckpointFileWith(path, k, nil)
}

// ReadCheckpointFileWith is ReadCheckpointFile that also opens an age file
// of a .pt with one of ids.
func ReadCheckpointFileWith(path string, k *Key, ids []age.Identity) (*Checkpoint, error) {
	data, err := ReadSealedUpTo(path, k, ids, maxModelFileBytes, "a model file")
	if err != nil {
		return nil, err
	}
	c, err := DecodeCheckpoint(data)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	return c, nil
}

// ReadMaybeEncrypted returns a file's content, decrypting it in memory when
// it is a Fernet token.
func ReadMaybeEncrypted(path string, k *Key) ([]byte, error) {
	return ReadMaybeEncryptedUpTo(path, k, maxModelFileBytes, "a model file")
}

// ReadMaybeEncryptedUpTo is ReadMaybeEncrypted for a file of at most max
// bytes (plain or encrypted); what names the file's role in the error that
// refuses a bigger one.
func ReadMaybeEncryptedUpTo(path string, k *Key, max int64, what string) ([]byte, error) {
	return ReadSealedUpTo(path, k, nil, max, what)
}

// IsSealedFile reports whether the named regular file holds a Fernet token
// or an age file.
func IsSealedFile(path string) (bool, error) {
	head, err := fileHead(path)
	return IsToken(head) || IsAge(head), err
}

// ReadSealedUpTo is ReadMaybeEncryptedUpTo for a file that may also be
// an age file, opened with one of ids.
func ReadSealedUpTo(path string, k *Key, ids []age.Identity, max int64, what string) ([]byte, error) {
	// One open serves the check and the read, so the file read is the
	// file checked.
	f, err := OpenRegular(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	head := make([]byte, 64)
	n, _ := io.ReadFull(f, head)
	head = head[:n]
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	if IsAge(head) {
		return decryptAgeOpen(f, path, max, what, ids)
	}
	if !IsToken(head) {
		return readOpen(f, path, max, what)
	}
	if k == nil {
		return nil, fmt.Errorf("reading %s: file is encrypted and no key was given", path)
	}
	return decryptOpen(f, path, max, what, NoTTL, k)
}
