package persistor

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// WriteFileAtomic writes a file through write so that name either keeps its
// old content or gets the whole new one: the bytes go to a temporary file in
// the same directory, which is synced, closed and renamed over name, and the
// directory is synced. On any error the temporary file is removed.
func WriteFileAtomic(name string, perm os.FileMode, write func(io.Writer) error) (err error) {
	dir, base := filepath.Split(name)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err = f.Chmod(perm); err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	if err = write(f); err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	if err = os.Rename(tmp, name); err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	if d, derr := os.Open(dir); derr == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// WriteEncrypted streams what write produces into a Fernet token under k and
// writes it atomically to name. The plaintext never reaches the disk.
func WriteEncrypted(name string, k *Key, write func(io.Writer) error) error {
	return WriteFileAtomic(name, 0o644, func(w io.Writer) error {
		enc, err := NewEncrypter(w, k)
		if err != nil {
			return err
		}
		if err := write(enc); err != nil {
			enc.Close() // stops its goroutine; the temporary file is removed
			return err
		}
		return enc.Close()
	})
}
