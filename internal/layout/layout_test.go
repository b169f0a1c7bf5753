package layout

import (
	"os/exec"
	"strings"
	"testing"
)

const mod = "github.com/flarego/flarego"

// rules: a package (and its sub-packages when the name ends in "/...")
// must not depend on any of the listed ones (same convention).
var rules = []struct {
	pkg    string
	forbid []string
}{
	{"persistor/...", []string{"flare/...", "model/...", "fcp/...", "worker/...", "pneumonia/...", "bench/..."}},
	{"proto/...", []string{"flare/...", "model/...", "persistor/...", "fcp/...", "internal/..."}},
	{"fcp/...", []string{"flare/...", "model/...", "worker/...", "pneumonia/...", "bench/..."}},
	{"model/...", []string{"flare/...", "worker/...", "pneumonia/...", "bench/..."}},
	{"flare/...", []string{"model/...", "worker/...", "pneumonia/...", "bench/..."}},
	{"flare", []string{"flare/wire20/...", "flare/client/...", "flare/server/...", "proto/..."}},
	{"flare/client/...", []string{"flare/wire20/...", "flare/server/...", "proto/..."}},
	{"flare/server/...", []string{"flare/wire20/...", "flare/client/...", "proto/..."}},
	{"flare/wire20/...", []string{"flare/client/...", "flare/server/...", "flare/cellnet/..."}},
	{"flare/site/...", []string{"flare/server/...", "flare/wire20/...", "proto/fedlearn", "proto/admin"}},
	{"flare/np/...", []string{"flare/client/...", "flare/server/...", "flare/wire20/...", "flare/cellnet/...", "proto/..."}},
	{"flare/cellnet/...", []string{"flare/client/...", "flare/server/...", "flare/wire20/...", "proto/fedlearn", "proto/admin"}},
	{"pneumonia/...", []string{"flare/client/...", "flare/server/...", "flare/wire20/...", "proto/...", "worker/..."}},
}

// pending are dependencies that break a rule today, each with why; the
// test fails when one of them goes away, so that the list stays true.
var pending = map[[2]string]string{}

func matches(pattern, pkg string) bool {
	if base, ok := strings.CutSuffix(pattern, "/..."); ok {
		return pkg == base || strings.HasPrefix(pkg, base+"/")
	}
	return pkg == pattern
}

func TestImportDirection(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", `{{.ImportPath}}{{range .Deps}} {{.}}{{end}}`, mod+"/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	deps := map[string][]string{}
	all := map[string][]string{} // every dependency, ours and others'

	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		pkg, ok := strings.CutPrefix(f[0], mod+"/")
		if !ok {
			continue
		}
		all[pkg] = f[1:]
		for _, d := range f[1:] {
			if d, ok := strings.CutPrefix(d, mod+"/"); ok {
				deps[pkg] = append(deps[pkg], d)
			}
		}
	}
	if len(deps) < 10 {
		t.Fatalf("go list found %d of our packages", len(deps))
	}
	seen := map[[2]string]bool{}
	for _, r := range rules {
		for pkg, ds := range deps {
			if !matches(r.pkg, pkg) {
				continue
			}
			for _, d := range ds {
				for _, f := range r.forbid {
					if !matches(f, d) {
						continue
					}
					if _, ok := pending[[2]string{pkg, d}]; ok {
						seen[[2]string{pkg, d}] = true
						continue
					}
					t.Errorf("%s imports %s (rule: %s must not import %s)", pkg, d, r.pkg, f)
				}
			}
		}
	}
	// The shared concepts and the runtimes know no particular transport.
	for _, pkg := range []string{"flare", "flare/client", "flare/server"} {
		for _, d := range all[pkg] {
			if strings.HasPrefix(d, "google.golang.org/grpc") {
				t.Errorf("%s depends on %s", pkg, d)
				break
			}
		}
	}
	for p, why := range pending {
		if !seen[p] {
			t.Errorf("%s no longer imports %s: take it off the pending list (%s)", p[0], p[1], why)
		}
	}
}
