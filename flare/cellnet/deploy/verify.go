package deploy

import (
	"bytes"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strconv"

	"github.com/flarego/flarego/flare"
)

// The files NVFlare's signing adds to every folder of a job
// (nvflare.lighter.tool_consts): the signatures of the folder's files and
// subfolders, and the certificate of whoever signed them.
const (
	SigFile           = ".__nvfl_sig.json"
	SubmitterCertFile = ".__nvfl_submitter.crt"
)

// Bounds on what a folder's signing files may hold: a signature is some
// hundred bytes of base64 for each of at most flare.MaxAppFiles entries, a
// certificate one or two kilobytes.
const (
	maxSigFileBytes  = 8 << 20
	maxCertFileBytes = 64 << 10
)

// ErrUnsigned is returned when the app's top folder has no SigFile: the
// app was not signed at all.
var ErrUnsigned = errors.New("app is not signed")

// ErrSignature is wrapped by every other verification failure.
var ErrSignature = errors.New("app signature does not verify")

// Verify checks the signatures of the app in folder dir as NVFlare's
// verify_folder_signature does (nvflare.lighter.utils, the check of a
// site or server in secure mode): every folder holds SigFile, a JSON
// object from each file and subfolder name to its signature, and
// SubmitterCertFile, the signer's PEM certificate. The certificate must be
// signed by rootCA, the project's root (rootCA.pem of the startup kit);
// each file's signature is over its bytes, each subfolder's over its name,
// both RSA-PSS with SHA-256 and MGF1-SHA-256, in standard base64. The two
// signing files themselves are not signed. Verify returns the signer's
// certificate.
//
// It is stricter than NVFlare in three ways: anything but a regular file
// or folder (a symlink) is refused, a name signed but not there is refused
// (NVFlare ignores it), and all folders must carry the same certificate
// (NVFlare takes any certificate from the root in each folder, so anyone
// holding one could swap a subfolder's content). As in NVFlare, validity
// periods are not checked.
func Verify(dir string, rootCA *x509.Certificate) (*x509.Certificate, error) {
	return VerifyFS(os.DirFS(dir), rootCA)
}

// VerifyFS is [Verify] over the app in fsys.
func VerifyFS(fsys fs.FS, rootCA *x509.Certificate) (*x509.Certificate, error) {
	if rootCA == nil {
		return nil, errors.New("verifying an app: no root CA")
	}
	return verifyFS(fsys, func(c *x509.Certificate) error { return c.CheckSignatureFrom(rootCA) })
}

// verifyFS checks the app in fsys; trust says whether a submitter
// certificate comes from the project's root.
func verifyFS(fsys fs.FS, trust func(*x509.Certificate) error) (*x509.Certificate, error) {
	var signer *x509.Certificate
	queue := []string{"."}
	for len(queue) > 0 {
		dir := queue[0]
		queue = queue[1:]
		subdirs, cert, err := verifyFolder(fsys, dir, signer, trust)
		if err != nil {
			return nil, err
		}
		signer = cert
		queue = append(queue, subdirs...)
	}
	return signer, nil
}

// verifyFolder checks one folder's entries against its signatures and
// returns its subfolders and its certificate. signer is the certificate of
// the folders checked before, nil for the top one.
func verifyFolder(fsys fs.FS, dir string, signer *x509.Certificate, trust func(*x509.Certificate) error) ([]string, *x509.Certificate, error) {
	where := func(name string) string {
		if dir == "." {
			return strconv.Quote(flare.LogCut(name))
		}
		return strconv.Quote(flare.LogCut(path.Join(dir, name)))
	}
	fail := func(name, format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrSignature, where(name), fmt.Sprintf(format, args...))
	}
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrSignature, err)
	}
	sigData, err := readBounded(fsys, path.Join(dir, SigFile), maxSigFileBytes)
	if errors.Is(err, fs.ErrNotExist) {
		if dir == "." {
			return nil, nil, fmt.Errorf("%w: no %s in its top folder", ErrUnsigned, SigFile)
		}
		return nil, nil, fail(SigFile, "missing: the folder is not signed")
	}
	if err != nil {
		return nil, nil, fail(SigFile, "%v", err)
	}
	var sigs map[string]string
	if err := json.Unmarshal(sigData, &sigs); err != nil || sigs == nil {
		return nil, nil, fail(SigFile, "not a JSON object of base64 signatures")
	}
	cert, err := submitterCert(fsys, dir)
	if err != nil {
		return nil, nil, fail(SubmitterCertFile, "%v", err)
	}
	if signer == nil {
		if err := trust(cert); err != nil {
			return nil, nil, fail(SubmitterCertFile, "the submitter certificate (%s) is not from the project's root CA: %v", certName(cert), err)
		}
	} else if !bytes.Equal(cert.Raw, signer.Raw) {
		return nil, nil, fail(SubmitterCertFile, "another submitter certificate (%s) than the top folder's (%s)", certName(cert), certName(signer))
	}
	pub, ok := cert.PublicKey.(*rsa.PublicKey)
	if !ok {
		return nil, nil, fail(SubmitterCertFile, "the submitter certificate's key is a %T, not RSA (NVFlare signs with RSA-PSS)", cert.PublicKey)
	}

	var subdirs []string
	seen := make(map[string]bool, len(entries))
	for _, e := range entries {
		name := e.Name()
		if name == SigFile || name == SubmitterCertFile {
			continue
		}
		seen[name] = true
		b64, ok := sigs[name]
		if !ok || b64 == "" {
			return nil, nil, fail(name, "not signed (no entry in %s)", SigFile)
		}
		sig, err := base64.StdEncoding.DecodeString(b64)
		if err != nil {
			return nil, nil, fail(name, "its signature is not base64")
		}
		var digest [sha256.Size]byte
		switch {
		case e.IsDir():
			digest = sha256.Sum256([]byte(name))
			subdirs = append(subdirs, path.Join(dir, name))
		case e.Type().IsRegular():
			if digest, err = hashFile(fsys, path.Join(dir, name)); err != nil {
				return nil, nil, fail(name, "%v", err)
			}
		case e.Type()&fs.ModeSymlink != 0:
			return nil, nil, fail(name, "a symlink, not a regular file or folder")
		default:
			return nil, nil, fail(name, "not a regular file or folder (mode %v)", e.Type())
		}
		if err := rsa.VerifyPSS(pub, crypto.SHA256, digest[:], sig, pss); err != nil {
			if e.IsDir() {
				return nil, nil, fail(name, "the signature of the folder's name does not match")
			}
			return nil, nil, fail(name, "the signature does not match the content (changed after signing, or signed by another key)")
		}
	}
	var gone []string
	for name := range sigs {
		if !seen[name] {
			gone = append(gone, name)
		}
	}
	if len(gone) > 0 {
		slices.Sort(gone)
		return nil, nil, fail(gone[0], "signed, but not in the app")
	}
	return subdirs, cert, nil
}

// pss is NVFlare's padding: PSS with MGF1-SHA256; NVFlare signs with the
// largest salt, and any salt length is taken here.
var pss = &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto, Hash: crypto.SHA256}

// submitterCert reads and parses a folder's SubmitterCertFile.
func submitterCert(fsys fs.FS, dir string) (*x509.Certificate, error) {
	b, err := readBounded(fsys, path.Join(dir, SubmitterCertFile), maxCertFileBytes)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errors.New("missing: the folder says not who signed it")
	}
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(block.Bytes)
}

// certName says whose a certificate is, for an error.
func certName(c *x509.Certificate) string {
	return "CN " + strconv.Quote(flare.LogCut(c.Subject.CommonName)) + " from " + strconv.Quote(flare.LogCut(c.Issuer.CommonName))
}

// readBounded reads a regular file of at most max bytes.
func readBounded(fsys fs.FS, name string, max int64) ([]byte, error) {
	f, err := fsys.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil {
		return nil, err
	} else if !fi.Mode().IsRegular() {
		return nil, errors.New("not a regular file")
	} else if fi.Size() > max {
		return nil, fmt.Errorf("%d bytes, more than %d", fi.Size(), max)
	}
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err == nil && int64(len(b)) > max {
		err = fmt.Errorf("more than %d bytes", max)
	}
	return b, err
}

// hashFile is the SHA-256 of a file's content, read as a stream.
func hashFile(fsys fs.FS, name string) ([sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	f, err := fsys.Open(name)
	if err != nil {
		return sum, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return sum, err
	}
	h.Sum(sum[:0])
	return sum, nil
}
