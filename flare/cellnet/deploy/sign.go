package deploy

import (
	"archive/zip"
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/persistor"
)

// SignedZip zips the app folder dir as a server deploys it to its sites,
// signed as NVFlare's sign_folders signs a job: in every folder a
// .__nvfl_sig.json that maps each file's name to the RSA-PSS signature of
// its bytes and each subfolder's name to that of its name, and the
// signer's certificate as .__nvfl_submitter.crt. Nothing is written to
// dir. Files are read with the bounds of an app (MaxAppBytes in all).
func SignedZip(dir string, key *rsa.PrivateKey, certPEM []byte) ([]byte, error) {
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	var total int64
	var walk func(rel string) error
	walk = func(rel string) error {
		entries, err := os.ReadDir(filepath.Join(dir, filepath.FromSlash(rel)))
		if err != nil {
			return err
		}
		sort.Slice(entries, func(i, j int) bool { return entries[i].Name() < entries[j].Name() })
		sigs := map[string]string{}
		for _, e := range entries {
			name := e.Name()
			if name == SigFile || name == SubmitterCertFile {
				continue
			}
			p := path.Join(rel, name)
			content := []byte(name)
			switch {
			case e.IsDir():
				if _, err := zw.Create(p + "/"); err != nil {
					return err
				}
				if err := walk(p); err != nil {
					return err
				}
			case e.Type().IsRegular():
				b, err := persistor.ReadRegular(filepath.Join(dir, filepath.FromSlash(p)), flare.MaxAppBytes-total, "a file of an app")
				if err != nil {
					return err
				}
				total += int64(len(b))
				w, err := zw.Create(p)
				if err != nil {
					return err
				}
				if _, err := w.Write(b); err != nil {
					return err
				}
				content = b
			default:
				return fmt.Errorf("%s: not a regular file or folder", filepath.Join(dir, filepath.FromSlash(p)))
			}
			h := sha256.Sum256(content)
			sig, err := rsa.SignPSS(rand.Reader, key, crypto.SHA256, h[:], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto})
			if err != nil {
				return err
			}
			sigs[name] = base64.StdEncoding.EncodeToString(sig)
		}
		b, err := json.Marshal(sigs)
		if err != nil {
			return err
		}
		for name, content := range map[string][]byte{SigFile: b, SubmitterCertFile: certPEM} {
			w, err := zw.Create(path.Join(rel, name))
			if err != nil {
				return err
			}
			if _, err := w.Write(content); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk(""); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
