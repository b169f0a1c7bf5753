package model

import (
	"bytes"
	"fmt"

	"github.com/flarego/flarego/persistor"
)

// LoadSpec reads a JSON spec file, decrypting it in memory with k when it
// is a Fernet token (the job ships the architecture only encrypted).
func LoadSpec(path string, k *persistor.Key) (*Spec, error) {
	// An encrypted spec is about 4/3 the size of its text.
	data, err := persistor.ReadMaybeEncryptedUpTo(path, k, 2*maxSpecBytes, "a model spec")
	if err != nil {
		return nil, err
	}
	s, err := ReadSpec(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	// The spec's net is fed images: refuse now an input they cannot fill.
	if _, _, err := s.ImageInput(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}
