package pneumonia

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"
	"github.com/flarego/flarego/persistor"
)

// The persistor's "recipients" argument (config_fed_server.json) and the
// credentials' recipients (Config.Recipients) both seal the models it
// saves; a secret key given as a recipient is refused without echoing it.
func TestPersistorRecipients(t *testing.T) {
	dir := t.TempDir()
	key := testKey(t)
	job := writeJob(t, dir, key)
	fromArgs, fromCreds := mustIdentity(t), mustIdentity(t)
	reg := Registry(Config{JobDir: job, Key: key, Recipients: []age.Recipient{fromCreds.Recipient()}, Output: filepath.Join(dir, "output"), Logf: t.Logf})
	args, _ := json.Marshal(map[string]any{"global_model_file_name": "/output/m.pt.enc", "recipients": []string{fromArgs.Recipient().String()}})
	os.MkdirAll(filepath.Join(dir, "output"), 0o755)
	p, err := reg.Persistors[PathPersistor](args)
	if err != nil {
		t.Fatal(err)
	}
	ck, err := p.Load()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Save(ck); err != nil {
		t.Fatal(err)
	}
	saved := filepath.Join(dir, "output", "m.pt.enc")
	for _, id := range []*age.X25519Identity{fromArgs, fromCreds} {
		if _, err := persistor.ReadCheckpointFileWith(saved, nil, []age.Identity{id}); err != nil {
			t.Fatalf("a recipient cannot open the saved model: %v", err)
		}
	}
	if _, err := persistor.ReadCheckpointFile(saved, key); err == nil {
		t.Fatal("the job's key opens the owner's model")
	}
	bad, _ := json.Marshal(map[string]any{"recipients": []string{fromArgs.String()}})
	if _, err := reg.Persistors[PathPersistor](bad); err == nil || !strings.Contains(err.Error(), "is a secret key") || strings.Contains(err.Error(), fromArgs.String()) {
		t.Fatalf("a secret key as recipient: %v", err)
	}
}

func mustIdentity(t *testing.T) *age.X25519Identity {
	t.Helper()
	id, err := persistor.GenerateIdentity()
	if err != nil {
		t.Fatal(err)
	}
	return id
}
