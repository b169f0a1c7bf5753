package deploy

import (
	"archive/zip"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/cellnet/fobs"
	"github.com/flarego/flarego/flare/cellnet/lobs"
	"github.com/flarego/flarego/flare/cellnet/msgpk"
)

const testJob = "47130cd6-dd22-44de-a903-93f5f38b74b0"

func testMeta() msgpk.Map {
	return msgpk.Map{
		{Key: "name", Value: "hello-numpy-sag"},
		{Key: "resource_spec", Value: msgpk.Map{}},
		{Key: "min_clients", Value: int64(2)},
		{Key: "deploy_map", Value: msgpk.Map{{Key: "app", Value: []any{"@ALL"}}}},
		{Key: "submitter_name", Value: "admin@nvidia.com"},
		{Key: "job_id", Value: testJob},
		{Key: "submit_time", Value: 1796148237.1794121},
		{Key: "start_time", Value: ""},
	}
}

// testMetaJSON is what NVFlare's json.dump(job_meta, f, indent=4) writes
// for testMeta.
const testMetaJSON = `{
    "name": "hello-numpy-sag",
    "resource_spec": {},
    "min_clients": 2,
    "deploy_map": {
        "app": [
            "@ALL"
        ]
    },
    "submitter_name": "admin@nvidia.com",
    "job_id": "47130cd6-dd22-44de-a903-93f5f38b74b0",
    "submit_time": 1796148237.1794121,
    "start_time": ""
}`

func deployRequest(app []byte, headers ...msgpk.KV) *fobs.Message {
	h := msgpk.Map{{Key: "require_authz", Value: "true"}, {Key: "admin_command", Value: "submit_job"},
		{Key: HeaderJobID, Value: testJob}, {Key: HeaderAppName, Value: "app"}, {Key: HeaderJobMeta, Value: testMeta()}}
	for _, kv := range headers {
		set := false
		for i := range h {
			if h[i].Key == kv.Key {
				h[i].Value, set = kv.Value, true
			}
		}
		if !set {
			h = append(h, kv)
		}
	}
	return &fobs.Message{ID: flare.NewUUID(), Topic: flare.TopicDeploy, Body: app, Headers: h}
}

func zipApp(t testing.TB, dir string) []byte {
	t.Helper()
	b, err := flare.ZipApp(dir)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// workspaceHolds fails unless the workspace holds just the named entries
// (nothing half-deployed, no temporary folder).
func workspaceHolds(t *testing.T, ws string, names ...string) {
	t.Helper()
	entries, _ := os.ReadDir(ws)
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	if fmt.Sprint(got) != fmt.Sprint(names) && !(len(got) == 0 && len(names) == 0) {
		t.Fatalf("workspace holds %v, want %v", got, names)
	}
}

// A signed app deploys in secure mode where NVFlare's site puts it, with
// fl_app.txt and meta.json as NVFlare writes them, and the reply NVFlare
// sends; a second deploy of the job replaces the first.
func TestDeploySigned(t *testing.T) {
	p, _ := testProjects(t)
	app := signedApp(t, p)
	ws := t.TempDir()
	site := &Site{Name: "site-1", Workspace: ws, RootCA: p.root}
	r := site.Deploy(deployRequest(zipApp(t, app)))
	if !r.OK || r.Err != nil || r.Body != "deployed app to site-1" {
		t.Fatalf("%+v", r)
	}
	if r.AppDir != filepath.Join(ws, testJob, "app_site-1") || r.Signer == nil || r.Signer.Subject.CommonName != "admin@nvidia.com" {
		t.Fatalf("app %s, signer %v", r.AppDir, r.Signer)
	}
	if b, _ := os.ReadFile(filepath.Join(r.AppDir, "custom", "trainer.py")); string(b) != "class Trainer: pass\n" {
		t.Fatalf("trainer.py %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(ws, testJob, "fl_app.txt")); string(b) != "app" {
		t.Fatalf("fl_app.txt %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(ws, testJob, "meta.json")); string(b) != testMetaJSON {
		t.Fatalf("meta.json:\n%s\nwant\n%s", b, testMetaJSON)
	}
	reply := r.Reply()
	if reply.Topic != "reply" || reply.Body != "deployed app to site-1" || reply.Headers.String(HeaderReturnCode) != ReturnOK || reply.ID == "" {
		t.Fatalf("reply %+v", reply)
	}
	enc, err := fobs.Encode(reply)
	if err != nil {
		t.Fatal(err)
	}
	c, err := lobs.Decode(enc, lobs.V27)
	if err != nil {
		t.Fatal(err)
	}
	v, err := fobs.Decode(c, fobs.Options{})
	if back, ok := v.(*fobs.Message); err != nil || !ok || back.Body != "deployed app to site-1" || back.Headers.String(HeaderReturnCode) != ReturnOK {
		t.Fatalf("reply decodes to %+v %v", v, err)
	}

	os.WriteFile(filepath.Join(ws, testJob, "stale.txt"), []byte("x"), 0o644)
	if r := site.Deploy(deployRequest(zipApp(t, app))); !r.OK {
		t.Fatalf("second deploy: %+v", r)
	}
	if _, err := os.Stat(filepath.Join(ws, testJob, "stale.txt")); err == nil {
		t.Fatal("the earlier run folder was kept")
	}
	workspaceHolds(t, ws, testJob)
}

// A tampered, unsigned or foreign app is refused in secure mode with
// NVFlare's words, the reason in Err, and nothing written; without a root
// (non-secure mode) signatures are not looked at.
func TestDeployRefusesBadSignatures(t *testing.T) {
	p, other := testProjects(t)
	tampered := signedApp(t, p)
	os.WriteFile(filepath.Join(tampered, "custom", "trainer.py"), []byte("import os; os.system('x')"), 0o644)
	unsigned := filepath.Join(t.TempDir(), "app")
	writeApp(t, unsigned)
	foreign := signedApp(t, other)

	for _, c := range []struct {
		name, dir, want string
	}{
		{"tampered", tampered, `"custom/trainer.py": the signature does not match`},
		{"unsigned", unsigned, "app is not signed"},
		{"foreign", foreign, "not from the project's root CA"},
	} {
		ws := t.TempDir()
		r := (&Site{Name: "site-1", Workspace: ws, RootCA: p.root}).Deploy(deployRequest(zipApp(t, c.dir)))
		if r.OK || r.Body != "app app does not pass signature verification" || r.Err == nil || !strings.Contains(r.Err.Error(), c.want) {
			t.Errorf("%s: %+v", c.name, r)
		}
		if reply := r.Reply(); reply.Headers.String(HeaderReturnCode) != ReturnError {
			t.Errorf("%s: reply %+v", c.name, reply)
		}
		workspaceHolds(t, ws)

		if r := (&Site{Name: "site-1", Workspace: ws}).Deploy(deployRequest(zipApp(t, c.dir))); !r.OK {
			t.Errorf("%s, non-secure: %+v", c.name, r)
		}
	}

	// AllowUnsigned takes the unsigned app, and still checks a signed one.
	site := &Site{Name: "site-1", Workspace: t.TempDir(), RootCA: p.root, AllowUnsigned: true}
	if r := site.Deploy(deployRequest(zipApp(t, unsigned))); !r.OK || r.Signer != nil {
		t.Errorf("unsigned, allowed: %+v", r)
	}
	if r := site.Deploy(deployRequest(zipApp(t, tampered))); r.OK {
		t.Errorf("tampered, unsigned allowed: %+v", r)
	}
}

func zipEntries(t testing.TB, add func(zw *zip.Writer)) []byte {
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	add(zw)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// Hostile zips and headers are refused before anything lands in the
// workspace.
func TestDeployRefusesHostileRequests(t *testing.T) {
	p, _ := testProjects(t)
	good := zipApp(t, signedApp(t, p))
	slip := zipEntries(t, func(zw *zip.Writer) {
		w, _ := zw.Create("config/x.json")
		w.Write([]byte("{}"))
		w, _ = zw.Create("../../evil.py")
		w.Write([]byte("x"))
	})
	link := zipEntries(t, func(zw *zip.Writer) {
		h := &zip.FileHeader{Name: "custom"}
		h.SetMode(os.ModeSymlink | 0o777)
		w, _ := zw.CreateHeader(h)
		w.Write([]byte("/etc"))
	})
	bomb := zipEntries(t, func(zw *zip.Writer) {
		w, _ := zw.CreateRaw(&zip.FileHeader{Name: "big", Method: zip.Deflate, UncompressedSize64: flare.MaxAppBytes + 1, CompressedSize64: 1})
		w.Write([]byte{0})
	})
	many := zipEntries(t, func(zw *zip.Writer) {
		for i := range flare.MaxAppFiles + 1 {
			zw.Create(fmt.Sprintf("f%d", i))
		}
	})
	for _, c := range []struct {
		name string
		req  *fobs.Message
		body string
		want string
	}{
		{"zip slip", deployRequest(slip), "NVFLARE_ERROR: deployed app: entry", "leaves the app folder"},
		{"symlink", deployRequest(link), "NVFLARE_ERROR: deployed app: entry", "is a symlink"},
		{"bomb", deployRequest(bomb), "NVFLARE_ERROR: deployed app: entry", "larger than"},
		{"too many entries", deployRequest(many), "NVFLARE_ERROR: deployed app: 10001 entries", "more than 10000"},
		{"not a zip", deployRequest([]byte("PK nothing")), "NVFLARE_ERROR: deployed app: zip", "not a valid zip"},
		{"body a string", deployRequest(nil, msgpk.KV{}), "NVFLARE_ERROR: the app of job", "not zip bytes"},
		{"no job meta", deployRequest(good, msgpk.KV{Key: HeaderJobMeta, Value: nil}), "missing job meta", "no job_meta"},
		{"empty job meta", deployRequest(good, msgpk.KV{Key: HeaderJobMeta, Value: msgpk.Map{}}), "missing job meta", "no job_meta"},
		{"job id escapes", deployRequest(good, msgpk.KV{Key: HeaderJobID, Value: "../x"}), "NVFLARE_ERROR: job_id", `holds '/'`},
		{"job id dot", deployRequest(good, msgpk.KV{Key: HeaderJobID, Value: ".."}), "NVFLARE_ERROR: bad job_id", `".."`},
		{"job id hidden", deployRequest(good, msgpk.KV{Key: HeaderJobID, Value: ".deploy-x"}), "NVFLARE_ERROR: job_id", "letter or digit"},
		{"job id missing", deployRequest(good, msgpk.KV{Key: HeaderJobID, Value: nil}), "NVFLARE_ERROR: job_id", "not a string"},
		{"app name newline", deployRequest(good, msgpk.KV{Key: HeaderAppName, Value: "app\nINFO forged"}), "NVFLARE_ERROR: app_name", `holds '\n'`},
		{"job meta bytes", deployRequest(good, msgpk.KV{Key: HeaderJobMeta, Value: msgpk.Map{{Key: "x", Value: []byte("b")}}}), "NVFLARE_ERROR: job meta", "no JSON form"},
		{"other topic", &fobs.Message{Topic: "train.start"}, "invalid_request", "not a train.deploy"},
	} {
		if c.name == "body a string" {
			c.req.Body = "not bytes"
		}
		ws := t.TempDir()
		r := (&Site{Name: "site-1", Workspace: ws, RootCA: p.root}).Deploy(c.req)
		if r.OK || !strings.HasPrefix(r.Body, c.body) || r.Err == nil || !strings.Contains(r.Err.Error(), c.want) {
			t.Errorf("%s: %+v", c.name, r)
		}
		workspaceHolds(t, ws)
	}
	if r := (&Site{Name: "../site", Workspace: t.TempDir()}).Deploy(deployRequest(good)); r.OK {
		t.Errorf("a site name that is a path: %+v", r)
	}

	// A job named after a folder of the workspace that is no run folder
	// does not replace it.
	ws := t.TempDir()
	os.MkdirAll(filepath.Join(ws, "startup"), 0o755)
	os.WriteFile(filepath.Join(ws, "startup", "rootCA.pem"), []byte("root"), 0o644)
	os.WriteFile(filepath.Join(ws, "log.txt"), []byte("log"), 0o644)
	for _, job := range []string{"startup", "log.txt"} {
		r := (&Site{Name: "site-1", Workspace: ws, RootCA: p.root}).Deploy(deployRequest(good, msgpk.KV{Key: HeaderJobID, Value: job}))
		if r.OK || !strings.Contains(r.Body, "not a run folder") {
			t.Errorf("job %s: %+v", job, r)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(ws, "startup", "rootCA.pem")); string(b) != "root" {
		t.Fatal("the startup kit was replaced")
	}
	workspaceHolds(t, ws, "log.txt", "startup")
}

// pythonJSON writes floats, strings and nesting as Python's json.dump.
func TestPythonJSON(t *testing.T) {
	for x, want := range map[float64]string{
		1796148237.1794121: "1796148237.1794121", 1e16: "1e+16", 1.5e-05: "1.5e-05", 0.0001: "0.0001",
		123: "123.0", 1e15: "1000000000000000.0", 5e-324: "5e-324", 1.7976931348623157e308: "1.7976931348623157e+308",
		0.1: "0.1", 12345678901234567: "1.2345678901234568e+16", 9999999999999998: "9999999999999998.0", 0: "0.0",
	} {
		if got := pythonFloat(x); got != want {
			t.Errorf("%v: %s, want %s", x, got, want)
		}
	}
	b, err := pythonJSON(msgpk.Map{{Key: "a", Value: "é\u2028😀\x7f\x01\"\\ \t"}, {Key: "b", Value: []any{}}, {Key: "c", Value: msgpk.Map{}},
		{Key: "d", Value: []any{int64(1), msgpk.Map{{Key: "x", Value: nil}, {Key: "y", Value: true}}}}, {Key: int64(5), Value: int64(2)}})
	want := `{
    "a": "\u00e9\u2028\ud83d\ude00\u007f\u0001\"\\ \t",
    "b": [],
    "c": {},
    "d": [
        1,
        {
            "x": null,
            "y": true
        }
    ],
    "5": 2
}`
	if err != nil || string(b) != want {
		t.Fatalf("%s %v", b, err)
	}
	if !json.Valid(b) {
		t.Fatal("not JSON")
	}
	if _, err := pythonJSON(msgpk.Map{{Key: 1.5, Value: 1}}); err == nil {
		t.Fatal("a float key was written")
	}
	var deep any = int64(1)
	for range 100 {
		deep = []any{deep}
	}
	if _, err := pythonJSON(deep); err == nil {
		t.Fatal("no depth bound")
	}
}

// Whatever app bytes a request carries, Deploy in secure mode refuses
// them leaving the workspace empty, or deploys a signed app.
func FuzzDeploy(f *testing.F) {
	p, _ := testProjects(f)
	dir := filepath.Join(f.TempDir(), "app")
	writeApp(f, dir)
	signFolders(f, dir, p.adminKey, p.adminPEM)
	f.Add(zipApp(f, dir))
	f.Add(zipEntries(f, func(zw *zip.Writer) {
		w, _ := zw.Create(SigFile)
		w.Write([]byte(`{"x": "AAAA"}`))
		w, _ = zw.Create(SubmitterCertFile)
		w.Write(p.adminPEM)
		w, _ = zw.Create("x")
		w.Write([]byte("x"))
	}))
	f.Fuzz(func(t *testing.T, app []byte) {
		ws := t.TempDir()
		r := (&Site{Name: "site-1", Workspace: ws, RootCA: p.root}).Deploy(deployRequest(app))
		if !r.OK {
			if r.Err == nil || r.Body == "" {
				t.Fatalf("refused without a reason: %+v", r)
			}
			workspaceHolds(t, ws)
			return
		}
		if r.Signer == nil {
			t.Fatal("deployed without a signer")
		}
		if _, err := Verify(r.AppDir, p.root); err != nil {
			t.Fatalf("deployed, but does not verify: %v", err)
		}
	})
}
