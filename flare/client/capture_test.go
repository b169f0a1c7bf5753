//go:build capture

package client

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/internal/flaretest"
	"github.com/flarego/flarego/flare/wire20"
)

// TestCaptureClients runs flarego's site-1 and site-2 on the admin channel
// of the server at $FLAREGO_CAPTURE_TARGET until it shuts them down, for
// testdata/nvflare/captured-run2/capture.sh (which records what the real
// NVFlare server sees).
func TestCaptureClients(t *testing.T) {
	target, ws := os.Getenv("FLAREGO_CAPTURE_TARGET"), os.Getenv("FLAREGO_CAPTURE_WS")
	if target == "" || ws == "" {
		t.Skip("FLAREGO_CAPTURE_TARGET and FLAREGO_CAPTURE_WS not set")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	for _, name := range []string{"site-1", "site-2"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &Client{Name: name, Wire: wire20.Wire{Gzip: true}, Target: target, Logf: t.Logf}
			err := c.RunAdmin(ctx, AdminHandler{Workspace: filepath.Join(ws, name), Start: func(string) (map[string]flare.Executor, error) {
				return map[string]flare.Executor{"train": flaretest.AddExecutor{Delta: 1, Steps: 1}}, nil
			}})
			if err != nil {
				t.Errorf("%s: %v", name, err)
			}
		}()
	}
	wg.Wait()
}
