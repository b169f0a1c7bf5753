package model

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// testdata/pneumonia_spec.json is the shipped plaintext form of the seed's
// network.py; it must stay the built-in spec.
func TestShippedSpecIsPneumoniaModel(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "testdata", "pneumonia_spec.json"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := ParseSpec(data)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(s, PneumoniaSpec()) {
		t.Fatalf("testdata/pneumonia_spec.json differs from PneumoniaSpec()")
	}
}
