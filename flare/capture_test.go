//go:build capture

package flare

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
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
			c := &Client{Name: name, Target: target, Logf: t.Logf, Gzip: true}
			err := c.RunAdmin(ctx, AdminHandler{Workspace: filepath.Join(ws, name), Start: func(string) (map[string]Executor, error) {
				return map[string]Executor{"train": addExecutor{delta: 1, steps: 1}}, nil
			}})
			if err != nil {
				t.Errorf("%s: %v", name, err)
			}
		}()
	}
	wg.Wait()
}
