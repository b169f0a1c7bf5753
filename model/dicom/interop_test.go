//go:build interop

package dicom

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// unavailable skips the test for want of a peer, except under CI=true,
// where a missing peer is a failure: the interop run must not pass
// without checking anything.
func unavailable(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s (CI=true: not skipping)", why)
	}
	t.Skip(why)
}

// TestInteropPydicom runs testdata/dicom/make.py (with /usr/bin/python3,
// or $PYTHON) into a temporary folder: pydicom writes fresh files, gdcmconv
// converts them to each transfer syntax, and every one must decode to
// pydicom's pixel array and to make.py's 8-bit image, or be refused by
// name. The pixel arrays and 8-bit images it writes must also be the
// committed ones: the committed files are what make.py makes.
func TestInteropPydicom(t *testing.T) {
	py := os.Getenv("PYTHON")
	if py == "" {
		py = "/usr/bin/python3"
	}
	if _, err := exec.LookPath(py); err != nil {
		unavailable(t, py+" not found")
	}
	if out, err := exec.Command(py, "-c", "import pydicom, numpy, PIL").CombinedOutput(); err != nil {
		unavailable(t, "pydicom, numpy or Pillow missing (apt-get install python3-pydicom python3-numpy python3-pil): "+strings.TrimSpace(string(out)))
	}
	if _, err := exec.LookPath("gdcmconv"); err != nil {
		unavailable(t, "gdcmconv not found (apt-get install libgdcm-tools)")
	}
	dir := t.TempDir()
	if out, err := exec.Command(py, filepath.Join(fixtureDir, "make.py"), dir).CombinedOutput(); err != nil {
		t.Fatalf("make.py: %v\n%s", err, out)
	}
	checkFixtures(t, dir)
	fresh := readManifest(t, dir)
	committed := readManifest(t, fixtureDir)
	if len(fresh) != len(committed) {
		t.Fatalf("make.py writes %d files, %d are committed", len(fresh), len(committed))
	}
	for i, e := range fresh {
		if e.File != committed[i].File {
			t.Errorf("file %d is %s, committed %s", i, e.File, committed[i].File)
			continue
		}
		for _, ref := range []string{e.Pixels, e.Gray8} {
			if ref == "" || e.Lossy {
				continue // Pillow's libjpeg may decode differently
			}
			if !bytes.Equal(mustRead(t, filepath.Join(dir, ref)), mustRead(t, filepath.Join(fixtureDir, ref))) {
				t.Errorf("%s differs from the committed one: run make.py again", ref)
			}
		}
		if !bytes.Equal(mustRead(t, filepath.Join(dir, e.File)), mustRead(t, filepath.Join(fixtureDir, e.File))) {
			t.Logf("%s differs from the committed file (another pydicom or gdcm version)", e.File)
		}
	}
}
