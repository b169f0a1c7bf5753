package deploy

import (
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/cellnet/fobs"
	"github.com/flarego/flarego/flare/cellnet/internal/capture"
	"github.com/flarego/flarego/flare/cellnet/lobs"
	"github.com/flarego/flarego/flare/cellnet/msgpk"
)

// capturedDeploy is the train.deploy request of the NVFlare 2.8.1 capture
// (the same to both sites) and the bodies of the sites' replies to it.
func capturedDeploy(t *testing.T) (*fobs.Message, []string) {
	var req *fobs.Message
	var replies []string
	for _, p := range capture.Payloads(t, "nvflare-2.8.1") {
		if p.Channel != "admin" {
			continue
		}
		c, err := lobs.Decode(p.Data, lobs.V27)
		if err != nil {
			t.Fatal(err)
		}
		v, err := fobs.Decode(c, fobs.Options{})
		if err != nil {
			t.Fatal(err)
		}
		m, ok := v.(*fobs.Message)
		if !ok {
			continue
		}
		if m.Topic == flare.TopicDeploy {
			req = m
		}
		if body, _ := m.Body.(string); m.Topic == "reply" && strings.HasPrefix(body, "deployed ") {
			if m.Headers.String(HeaderReturnCode) != ReturnOK {
				t.Fatalf("captured reply %+v", m)
			}
			replies = append(replies, body)
		}
	}
	if req == nil || len(replies) != 2 {
		t.Fatalf("the capture holds no train.deploy (%v) or not its two replies (%q)", req != nil, replies)
	}
	return req, replies
}

// capturedMetaJSON is what Python's json.dump(job_meta, f, indent=4), as
// NVFlare's site writes meta.json, makes of the captured job meta.
const capturedMetaJSON = `{
    "name": "hello-numpy-sag",
    "resource_spec": {},
    "min_clients": 2,
    "deploy_map": {
        "app": [
            "@ALL"
        ]
    },
    "study": "default",
    "submitter_name": "admin@nvidia.com",
    "submitter_org": "nvidia",
    "submitter_role": "project_admin",
    "job_folder_name": "hello-numpy-sag",
    "job_id": "47130cd6-dd22-44de-a903-93f5f38b74b0",
    "submit_time": 1796148237.1794121,
    "submit_time_iso": "2026-12-01T18:03:57.179412+00:00",
    "start_time": "",
    "duration": "N/A",
    "data_storage_format": 2,
    "status": "SUBMITTED",
    "schedule_history": [
        "2026-12-01 18:03:57: scheduled"
    ],
    "schedule_count": 1,
    "last_schedule_time": 1796148237.3492455
}`

// The train.deploy of a real NVFlare 2.8.1 run (clear connections, a
// provisioned project: the admin console signed the job) deploys, and we
// reply as NVFlare's site-1 did. The capture holds no rootCA.pem (the
// project's root certificate never goes over the wire), so the signatures
// NVFlare made over every folder are checked against the submitter
// certificate the app carries, trusted by its issuer's name; a root made
// here refuses it.
func TestCapturedDeploy(t *testing.T) {
	req, replies := capturedDeploy(t)
	meta, _ := headerValue(req, HeaderJobMeta).(msgpk.Map)
	if req.Headers.String(HeaderAppName) != "app" || meta.String("submitter_name") != "admin@nvidia.com" || req.Headers.String(HeaderJobID) != meta.String("job_id") {
		t.Fatalf("headers %v", req.Headers)
	}

	ws := t.TempDir()
	r := (&Site{Name: "site-1", Workspace: ws}).Deploy(req)
	if !r.OK || r.Body != replies[0] && r.Body != replies[1] || r.Body != "deployed app to site-1" {
		t.Fatalf("%+v, NVFlare's sites replied %q", r, replies)
	}
	for _, f := range []string{"config/config_fed_client.json", "config/config_fed_server.json", SigFile, SubmitterCertFile, "config/" + SigFile} {
		if _, err := os.Stat(filepath.Join(r.AppDir, f)); err != nil {
			t.Fatal(err)
		}
	}
	if b, err := os.ReadFile(filepath.Join(filepath.Dir(r.AppDir), "meta.json")); err != nil || string(b) != capturedMetaJSON {
		t.Fatalf("meta.json:\n%s\nwant\n%s", b, capturedMetaJSON)
	}

	byIssuer := func(c *x509.Certificate) error {
		if c.Issuer.CommonName != "nvf_peer" || c.Subject.CommonName != meta.String("submitter_name") {
			return fmt.Errorf("issued by %q to %q", c.Issuer.CommonName, c.Subject.CommonName)
		}
		return nil
	}
	signer, err := verifyFS(os.DirFS(r.AppDir), byIssuer)
	if err != nil || signer.Subject.CommonName != "admin@nvidia.com" {
		t.Fatalf("NVFlare's signatures: %v", err)
	}

	p, _ := testProjects(t)
	if _, err := Verify(r.AppDir, p.root); !errors.Is(err, ErrSignature) || !strings.Contains(err.Error(), "not from the project's root CA") {
		t.Fatalf("another root: %v", err)
	}
	if r := (&Site{Name: "site-1", Workspace: t.TempDir(), RootCA: p.root}).Deploy(req); r.OK || r.Body != "app app does not pass signature verification" {
		t.Fatalf("secure mode, another root: %+v", r)
	}

	f := filepath.Join(r.AppDir, "config", "config_fed_client.json")
	os.WriteFile(f, []byte(`{"format_version": 2, "executors": []}`), 0o644)
	if _, err := verifyFS(os.DirFS(r.AppDir), byIssuer); !errors.Is(err, ErrSignature) || !strings.Contains(err.Error(), `"config/config_fed_client.json": the signature does not match`) {
		t.Fatalf("tampered: %v", err)
	}
}
