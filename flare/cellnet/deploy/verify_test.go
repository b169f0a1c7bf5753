package deploy

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// An app signed as NVFlare signs it verifies, and Verify says who signed it.
func TestVerifySignedApp(t *testing.T) {
	p, _ := testProjects(t)
	signer, err := Verify(signedApp(t, p), p.root)
	if err != nil {
		t.Fatal(err)
	}
	if signer.Subject.CommonName != "admin@nvidia.com" {
		t.Fatalf("signer %v", signer.Subject)
	}
}

// Each way an app can fail its signatures is refused with an error that
// names the file and says what is wrong.
func TestVerifyRefuses(t *testing.T) {
	p, other := testProjects(t)
	_, site2PEM, site2Key := p.issue(t, "site-2")
	write := func(name, content string) func(string) {
		return func(dir string) {
			os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o755)
			os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644)
		}
	}
	editSigs := func(folder string, edit func(map[string]string)) func(string) {
		return func(dir string) {
			f := filepath.Join(dir, folder, SigFile)
			b, _ := os.ReadFile(f)
			var sigs map[string]string
			json.Unmarshal(b, &sigs)
			edit(sigs)
			b, _ = json.Marshal(sigs)
			os.WriteFile(f, b, 0o644)
		}
	}
	for _, c := range []struct {
		name   string
		change func(dir string)
		want   string
	}{
		{"tampered file", write("config/config_fed_client.json", `{"format_version": 2, "executors": ["evil"]}`),
			`"config/config_fed_client.json": the signature does not match the content`},
		{"tampered top-level signature", editSigs(".", func(s map[string]string) { s["config"] = s["custom"] }),
			`"config": the signature of the folder's name does not match`},
		{"missing signature file", func(dir string) { os.Remove(filepath.Join(dir, "custom", "nets", SigFile)) },
			`"custom/nets/.__nvfl_sig.json": missing`},
		{"missing certificate", func(dir string) { os.Remove(filepath.Join(dir, "config", SubmitterCertFile)) },
			`"config/.__nvfl_submitter.crt": missing`},
		{"extra unsigned file", write("custom/backdoor.py", "import os"), `"custom/backdoor.py": not signed`},
		{"extra unsigned folder", func(dir string) { os.Mkdir(filepath.Join(dir, "custom", "more"), 0o755) }, `"custom/more": not signed`},
		{"signed file removed", func(dir string) { os.Remove(filepath.Join(dir, "custom", "trainer.py")) },
			`"custom/trainer.py": signed, but not in the app`},
		{"signature not base64", editSigs("custom", func(s map[string]string) { s["trainer.py"] = "!!" }), `"custom/trainer.py": its signature is not base64`},
		{"empty signature", editSigs("custom", func(s map[string]string) { s["trainer.py"] = "" }), `"custom/trainer.py": not signed`},
		{"signatures not JSON", write("config/"+SigFile, "[1, 2]"), `"config/.__nvfl_sig.json": not a JSON object`},
		{"signatures null", write("config/"+SigFile, "null"), `"config/.__nvfl_sig.json": not a JSON object`},
		{"certificate not PEM", write("config/"+SubmitterCertFile, "hello"), `"config/.__nvfl_submitter.crt": no PEM certificate`},
		{"cert from another CA", func(dir string) {
			for _, f := range []string{"", "config", "custom", "custom/nets"} {
				os.Remove(filepath.Join(dir, f, SigFile))
				os.Remove(filepath.Join(dir, f, SubmitterCertFile))
			}
			signFolders(t, dir, other.adminKey, other.adminPEM)
		}, `".__nvfl_submitter.crt": the submitter certificate (CN "admin@nvidia.com" from "nvf_peer") is not from the project's root CA`},
		{"subfolder signed by another certificate", func(dir string) {
			sub := filepath.Join(dir, "custom")
			for _, f := range []string{"", "nets"} {
				os.Remove(filepath.Join(sub, f, SigFile))
			}
			signFolders(t, sub, site2Key, site2PEM)
		}, `"custom/.__nvfl_submitter.crt": another submitter certificate (CN "site-2" from "nvf_peer") than the top folder's (CN "admin@nvidia.com"`},
		{"symlink", func(dir string) {
			os.Symlink("/etc/passwd", filepath.Join(dir, "custom", "passwd"))
		}, `"custom/passwd": not signed`},
		{"signed symlink", func(dir string) {
			os.Symlink("/etc/passwd", filepath.Join(dir, "custom", "passwd"))
			editSigs("custom", func(s map[string]string) { s["passwd"] = s["trainer.py"] })(dir)
		}, `"custom/passwd": a symlink, not a regular file or folder`},
	} {
		dir := signedApp(t, p)
		c.change(dir)
		_, err := Verify(dir, p.root)
		if !errors.Is(err, ErrSignature) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v\nwant %s", c.name, err, c.want)
		}
	}
}

// An app with no signature file at the top is unsigned (ErrUnsigned),
// which a site may take; one whose top is signed but not all below is not.
func TestVerifyUnsigned(t *testing.T) {
	p, _ := testProjects(t)
	dir := filepath.Join(t.TempDir(), "app")
	writeApp(t, dir)
	if _, err := Verify(dir, p.root); !errors.Is(err, ErrUnsigned) || errors.Is(err, ErrSignature) {
		t.Fatalf("unsigned app: %v", err)
	}
	dir = signedApp(t, p)
	os.Remove(filepath.Join(dir, SigFile))
	if _, err := Verify(dir, p.root); !errors.Is(err, ErrUnsigned) {
		t.Fatalf("top signature removed: %v", err)
	}
	if _, err := Verify(dir, nil); err == nil {
		t.Fatal("verified without a root")
	}
}
