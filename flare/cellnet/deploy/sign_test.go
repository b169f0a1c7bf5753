package deploy

import (
	"path/filepath"
	"strings"
	"testing"
)

// What SignedZip makes deploys on a secure site, as an app NVFlare's
// sign_folders signed; a copy with a file changed after signing does not.
func TestSignedZipDeploys(t *testing.T) {
	p, other := testProjects(t)
	dir := filepath.Join(t.TempDir(), "app")
	writeApp(t, dir)
	zip, err := SignedZip(dir, p.adminKey, p.adminPEM)
	if err != nil {
		t.Fatal(err)
	}
	site := &Site{Name: "site-1", Workspace: t.TempDir(), RootCA: p.root}
	if r := site.Deploy(deployRequest(zip)); !r.OK || r.Signer == nil {
		t.Fatalf("%+v", r)
	}
	// Signed by a certificate of another project: refused.
	zip2, err := SignedZip(dir, other.adminKey, other.adminPEM)
	if err != nil {
		t.Fatal(err)
	}
	site2 := &Site{Name: "site-1", Workspace: t.TempDir(), RootCA: p.root}
	if r := site2.Deploy(deployRequest(zip2)); r.OK || !strings.Contains(r.Err.Error(), "root") {
		t.Fatalf("another project's signer: %+v", r)
	}
}
