//go:build interop

package wire20

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/flarego/flarego/flare/internal/flaretest"
	peertool "github.com/flarego/flarego/internal/peer"
)

func peer(t *testing.T, args ...string) string { return peertool.Run(t, args...) }

// What we encode, Python's pickle.loads turns into the same Shareable and
// FLContext objects as NVFlare 2.0.5's own pickles (with a stand-in module
// tree for nvflare.apis, since NVFlare is not installed).
func TestInteropWirePicklesLoadInPython(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"shareable_dxo_f32_3x3.pkl", "shareable_dxo_multi.pkl", "shareable_dxo_bare.pkl",
		"shareable_validate_task.pkl", "shareable_metrics_result.pkl"} {
		golden := filepath.Join("..", "..", "testdata", "nvflare", "golden", name)
		s, err := DecodeShareable(flaretest.Fixture(t, "golden", name))
		if err != nil {
			t.Fatal(err)
		}
		b, err := EncodeShareable(s)
		if err != nil {
			t.Fatal(err)
		}
		ours := filepath.Join(dir, name)
		os.WriteFile(ours, b, 0o600)
		t.Logf("%s: %s", name, peer(t, "shareable-check", ours, golden))
	}
	c, err := DecodeFLContext(flaretest.Fixture(t, "golden", "fl_context_client.pkl"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := EncodeFLContext(c)
	if err != nil {
		t.Fatal(err)
	}
	ours := filepath.Join(dir, "ctx.pkl")
	os.WriteFile(ours, b, 0o600)
	peer(t, "flcontext-check", ours, filepath.Join("..", "..", "testdata", "nvflare", "golden", "fl_context_client.pkl"))
}
