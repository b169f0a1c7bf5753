package model

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flarego/flarego/fcp"
)

// A synthetic site is laid out as package fcp reads an FCP input root:
// training images in the first dataset, inference images and their CSV.
func TestSyntheticSiteHasTheFCPLayout(t *testing.T) {
	root := t.TempDir()
	if err := WriteSyntheticSite(root, 1, 1); err != nil {
		t.Fatal(err)
	}
	loc := fcp.Locations{Input: root}
	train, err := loc.TrainingFolder()
	if err != nil || train != filepath.Join(root, "datasets", "cxr", "file_data") {
		t.Fatalf("training folder %s, %v", train, err)
	}
	for _, dir := range []string{train, loc.InferenceFolder()} {
		classes, samples, err := ImageFolder(dir)
		if err != nil || strings.Join(classes, ",") != "NORMAL,PNEUMONIA" || len(samples) != 2 {
			t.Errorf("%s: %v, %d images, %v", dir, classes, len(samples), err)
		}
	}
	b, err := os.ReadFile(loc.DatasetCSV())
	if err != nil || !strings.HasPrefix(string(b), "patient_id,image_path,label\n") || strings.Count(string(b), "\n") != 3 {
		t.Errorf("dataset.csv %q, %v", b, err)
	}
}
