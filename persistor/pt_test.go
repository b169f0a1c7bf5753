package persistor

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPTRoundTripIsByteIdenticalToTorch(t *testing.T) {
	for _, name := range []string{"sd_small.pt", "nvflare_ckpt.pt", "pneumonia_init.pt", "sd_many.pt", "sd_small_buffer.pt"} {
		t.Run(name, func(t *testing.T) {
			want, err := os.ReadFile(filepath.Join("..", "testdata", "torch", name))
			if err != nil {
				t.Fatal(err)
			}
			v, err := DecodePT(want)
			if err != nil {
				t.Fatal(err)
			}
			prefix := strings.TrimSuffix(name, ".pt")
			if name == "sd_small_buffer.pt" {
				prefix = "archive"
			}
			var got bytes.Buffer
			if err := WritePT(&got, v, PTOptions{Prefix: prefix, Torch113: true}); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.Bytes(), want) {
				os.WriteFile(filepath.Join(t.TempDir(), "got.pt"), got.Bytes(), 0o600)
				t.Fatalf("written file differs from torch's (%d vs %d bytes)", got.Len(), len(want))
			}
		})
	}
}
