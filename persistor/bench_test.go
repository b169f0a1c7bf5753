package persistor

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"testing"
)

func syntheticStateDict(totalMB int) *StateDict {
	sd := NewStateDict()
	const per = 16 << 20
	for i := 0; i < totalMB<<20/per; i++ {
		t, _ := NewTensor(Float32, per/4)
		rand.Read(t.Data)
		sd.Set(fmt.Sprintf("layer%d.weight", i), t)
	}
	return sd
}

func benchSave(b *testing.B, sd *StateDict) {
	k, _ := GenerateKey()
	b.SetBytes(sd.Bytes())
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		enc, _ := NewEncrypter(io.Discard, k)
		if err := WritePT(enc, &Checkpoint{Model: sd}, PTOptions{}); err != nil {
			b.Fatal(err)
		}
		enc.Close()
	}
}

func benchLoad(b *testing.B, sd *StateDict) {
	k, _ := GenerateKey()
	var buf bytes.Buffer
	enc, _ := NewEncrypter(&buf, k)
	WritePT(enc, &Checkpoint{Model: sd}, PTOptions{})
	enc.Close()
	tok := buf.Bytes()
	b.SetBytes(sd.Bytes())
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		plain, err := DecryptFrom(bytes.NewReader(tok), int64(len(tok)), NoTTL, k)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := DecodeCheckpoint(plain); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSaveEncryptedPneumonia(b *testing.B) { benchSave(b, pneumoniaForBench(b)) }
func BenchmarkLoadEncryptedPneumonia(b *testing.B) { benchLoad(b, pneumoniaForBench(b)) }
func BenchmarkSaveEncrypted256MB(b *testing.B)     { benchSave(b, syntheticStateDict(256)) }
func BenchmarkLoadEncrypted256MB(b *testing.B)     { benchLoad(b, syntheticStateDict(256)) }

func pneumoniaForBench(b *testing.B) *StateDict {
	c, err := DecodeCheckpoint(readFixture(b, "torch", "pneumonia_init.pt"))
	if err != nil {
		b.Fatal(err)
	}
	return c.Model
}
