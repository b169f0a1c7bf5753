package main

import (
	"bytes"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flarego/flarego/flare/server"
	"github.com/flarego/flarego/internal/tensorboard"
	"github.com/flarego/flarego/pneumonia"
)

// writeEvents writes one event file in dir with the values given as
// tag → values at steps 1, 2, ...
func writeEvents(t *testing.T, dir string, series map[string][]float64) {
	t.Helper()
	w, err := tensorboard.Create(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for tag, vs := range series {
		for i, v := range vs {
			if err := w.Scalar(tag, int64(i+1), v); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func checkPNG(t *testing.T, path string, w, h int) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if b := img.Bounds(); b.Dx() != w || b.Dy() != h {
		t.Errorf("%s is %dx%d, want %dx%d", path, b.Dx(), b.Dy(), w, h)
	}
}

// A federated run's folder (two sites, the server with its per-round
// means and the cross-site matrix) makes one PNG of four panels, 2×2.
func TestReportFederatedRun(t *testing.T) {
	dir := t.TempDir()
	tb := filepath.Join(dir, "tb-logs")
	for i, site := range []string{"site-1", "site-2"} {
		off := float64(i) * 0.05
		writeEvents(t, filepath.Join(tb, site), map[string][]float64{
			pneumonia.TagTrainLoss:       {0.9 - off, 0.7, 0.6, 0.5, 0.45, 0.4},
			pneumonia.TagTrainAccuracy:   {0.5 + off, 0.6, 0.65, 0.7, 0.75, 0.8},
			pneumonia.TagImagesPerSecond: {30, 31, 29, 30, 32, 31},
		})
	}
	writeEvents(t, filepath.Join(tb, "server"), map[string][]float64{
		server.TagContributions: {2, 2, 2}, server.TagTrainLoss: {0.65, 0.5, 0.42}, server.TagTrainAccuracy: {0.6, 0.7, 0.78},
	})
	w, _ := tensorboard.Create(filepath.Join(tb, "server"))
	w.Scalars(3, tensorboard.Value{Tag: server.CrossSiteTag("site-1", "site-1"), Value: 0.9},
		tensorboard.Value{Tag: server.CrossSiteTag("site-2", "site-1"), Value: 0.7},
		tensorboard.Value{Tag: server.CrossSiteTag(server.ServerModelName, "site-1"), Value: 0.85},
		tensorboard.Value{Tag: server.CrossSiteTag("site-1", "site-2"), Value: 0.6})
	w.Close()
	out := filepath.Join(dir, "report.png")
	var stdout, stderr bytes.Buffer
	if rc := run([]string{"report", tb, "-o", out}, &stdout, &stderr); rc != 0 {
		t.Fatalf("exit %d: %s", rc, stderr.String())
	}
	if want := "wrote " + out + ": loss, accuracy, throughput, cross-site matrix from 3 run(s), 4 event file(s)"; !strings.Contains(stderr.String(), want) {
		t.Errorf("output %q, want %q", stderr.String(), want)
	}
	checkPNG(t, out, 1152, 869) // 2 × 6 in, 2 × 4.25 in + the header, at 96 dpi

	runs, _, err := readRuns(tb, func(err error) { t.Error(err) })
	if err != nil {
		t.Fatal(err)
	}
	if e, overlay := epochsPerRound(runs); e != 2 || !overlay {
		t.Errorf("epochs per round %d, %v; want 2 (6 steps in 3 rounds)", e, overlay)
	}
	m := readMatrix(runs)
	if m == nil || strings.Join(m.owners, " ") != "site-1 site-2 "+server.ServerModelName || strings.Join(m.sites, " ") != "site-2 site-1" {
		t.Fatalf("matrix %+v", m)
	}
	if v := m.Z(1, 1); v != float64(float32(0.7)) {
		t.Errorf("site-1's score of site-2's model: %v", v)
	}
	if v := m.Z(1, 0); v == v {
		t.Errorf("site-2's score of site-2's model, never written: %v", v)
	}
}

// flarego train's files, in DIR itself, are one run named after DIR; a
// damaged file is a warning and its good records are drawn; a folder
// without event files or with nothing to draw is an error; -o must be a
// PNG.
func TestReportErrors(t *testing.T) {
	dir := t.TempDir()
	tb := filepath.Join(dir, "curves")
	writeEvents(t, tb, map[string][]float64{pneumonia.TagTrainLoss: {0.7, 0.6, 0.5}})
	files, _ := filepath.Glob(filepath.Join(tb, tensorboard.FilePrefix+"*"))
	b, _ := os.ReadFile(files[0])
	os.WriteFile(files[0], b[:len(b)-2], 0o644)
	out := filepath.Join(dir, "one.png")
	var stdout, stderr bytes.Buffer
	if rc := run([]string{"report", "-o", out, tb}, &stdout, &stderr); rc != 0 {
		t.Fatalf("exit %d: %s", rc, stderr.String())
	}
	if !strings.Contains(stderr.String(), "warning: "+files[0]+": record at offset") || !strings.Contains(stderr.String(), "using the 3 event(s) before it") {
		t.Errorf("no warning about the damaged file: %s", stderr.String())
	}
	checkPNG(t, out, 576, 461) // one panel
	runs, _, _ := readRuns(tb, func(error) {})
	if len(runs) != 1 || runs[0].name != "." || runLabel(tb, ".") != "curves" || len(runs[0].points(pneumonia.TagTrainLoss)) != 2 {
		t.Errorf("runs %+v", runs)
	}

	empty := filepath.Join(dir, "empty")
	os.MkdirAll(filepath.Join(empty, "site-1"), 0o755)
	os.WriteFile(filepath.Join(empty, "site-1", "notes.txt"), []byte("x"), 0o644)
	for _, c := range []struct {
		args []string
		rc   int
		says string
	}{
		{[]string{"report", empty}, 1, "flarego report: no TensorBoard event files under " + empty},
		{[]string{"report", filepath.Join(dir, "missing")}, 1, "no such file or directory"},
		{[]string{"report", tb, "-o", filepath.Join(dir, "r.jpg")}, 2, "the report is a PNG"},
		{[]string{"report"}, 2, "usage"},
	} {
		stderr.Reset()
		if rc := run(c.args, &stdout, &stderr); rc != c.rc || !strings.Contains(stderr.String(), c.says) {
			t.Errorf("%q: exit %d, %q; want exit %d saying %q", c.args, rc, stderr.String(), c.rc, c.says)
		}
	}
	nothing := filepath.Join(dir, "nothing")
	writeEvents(t, nothing, map[string][]float64{"other/tag": {1}})
	stderr.Reset()
	if rc := run([]string{"report", nothing, "-o", filepath.Join(dir, "n.png")}, &stdout, &stderr); rc != 1 || !strings.Contains(stderr.String(), "hold none of the curves a report draws") {
		t.Errorf("nothing to draw: exit %d, %s", rc, stderr.String())
	}
}
