package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"sort"

	"github.com/flarego/flarego/persistor"
)

// maxJobBytes bounds what jobFingerprint reads: a job folder is configs
// and an encrypted architecture, not data.
const maxJobBytes = 256 << 20

// jobFingerprint names a one-job server's job for resuming it: a hash of
// every regular file of the app folder (paths and contents) and of the
// --set pairs. A restarted server with the same job and settings goes on
// from the last global model; any change starts the run afresh.
func jobFingerprint(dir string, sets map[string]string) (string, error) {
	h := sha256.New()
	var total int64
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		f, err := persistor.OpenRegular(p)
		if err != nil {
			return err
		}
		defer f.Close()
		fmt.Fprintf(h, "file %q\n", filepath.ToSlash(rel))
		n, err := io.Copy(h, io.LimitReader(f, maxJobBytes-total+1))
		if total += n; total > maxJobBytes {
			return fmt.Errorf("over %d MiB of files: not a job folder", maxJobBytes>>20)
		}
		return err
	})
	if err != nil {
		return "", fmt.Errorf("--job %s: %w", dir, err)
	}
	keys := make([]string, 0, len(sets))
	for k := range sets {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(h, "set %q=%q\n", k, sets[k])
	}
	return hex.EncodeToString(h.Sum(nil)[:16]), nil
}
