package persistor

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// staleTempAge is how long a temporary file of WriteFileAtomic must have
// gone unmodified before a later save of the same target removes it.
//
// A save writes its temporary file from start to end and then renames it, so
// one that has not changed for this long belongs to a process that died (or
// stopped) mid-save; a crash can leave nothing else behind, since the
// process that made the file is the only one that removes it. Removing the
// file of a save that is in fact still going on (a process paused for ten
// minutes, a clock skewed by as much between a network file system and us)
// costs only that save: its rename fails with an error and the target keeps
// the complete file it had.
const staleTempAge = 10 * time.Minute

// WriteFileAtomic writes a file through write so that name either keeps its
// old content or gets the whole new one: the bytes go to a temporary file in
// the same directory, which is synced, closed and renamed over name, and the
// directory is synced. On any error the temporary file is removed. After a
// successful save, the temporary files that earlier saves of name left when
// they crashed are removed too (see staleTempAge).
func WriteFileAtomic(name string, perm os.FileMode, write func(io.Writer) error) (err error) {
	dir, base := filepath.Split(name)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, tempPrefix(base)+"*")
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
	removeStaleTemps(dir, base, time.Now().Add(-staleTempAge))
	return nil
}

// tempPrefix starts the names of base's temporary files; os.CreateTemp ends
// them with decimal digits.
func tempPrefix(base string) string { return "." + base + ".tmp-" }

// removeStaleTemps removes, from dir, the regular files named as base's
// temporary files are, exactly, that were last modified before cutoff.
// Errors are ignored: this only tidies up.
func removeStaleTemps(dir, base string, cutoff time.Time) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	prefix := tempPrefix(base)
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), prefix)
		if !ok || rest == "" || strings.Trim(rest, "0123456789") != "" || !e.Type().IsRegular() {
			continue
		}
		info, err := e.Info()
		if err != nil || !info.ModTime().Before(cutoff) {
			continue
		}
		os.Remove(filepath.Join(dir, e.Name()))
	}
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
