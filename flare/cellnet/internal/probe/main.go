// Command probe signs a site in to a real NVFlare 2.4+ server and keeps it
// alive with heartbeats, for flare/cellnet's interop test (started by
// ../shared/tools/nvflare-peer-run.sh in place of NVFlare's clients, in the
// site's kit folder): probe SITE.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/flarego/flarego/flare/cellnet/cell"
	"github.com/flarego/flarego/flare/cellnet/conn"
	"github.com/flarego/flarego/flare/cellnet/register"
)

func main() {
	if err := run(os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "probe:", err)
		os.Exit(1)
	}
}

func run(site string) error {
	var kit struct {
		Servers []struct {
			Name    string `json:"name"`
			Service struct {
				Target string `json:"target"`
			} `json:"service"`
			Identity string `json:"identity"`
		} `json:"servers"`
		Client struct {
			Key  string `json:"ssl_private_key"`
			Cert string `json:"ssl_cert"`
			Root string `json:"ssl_root_cert"`
		} `json:"client"`
	}
	b, err := os.ReadFile(filepath.Join("startup", "fed_client.json"))
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, &kit); err != nil || len(kit.Servers) == 0 {
		return fmt.Errorf("fed_client.json: %v", err)
	}
	s := kit.Servers[0]
	in := func(p string) string { return filepath.Join("startup", p) }
	id, err := register.LoadIdentity(site, s.Name, in(kit.Client.Cert), in(kit.Client.Key), in(kit.Client.Root), s.Identity, os.ReadFile)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	c, err := conn.Dial(ctx, s.Service.Target, site, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	cl := cell.New(c, site)
	defer cl.Close()
	a, err := register.Register(ctx, cl, id, "127.0.0.1")
	if err != nil {
		return err
	}
	fmt.Printf("probe: %s registered with %s in %s (token %.8s…)\n", site, c.Peer, time.Since(start).Round(time.Millisecond), a.Token)
	// Registrations again, on the same connection, time the server's
	// side of it once it is warm.
	for i := 0; i < 3; i++ {
		t0 := time.Now()
		if _, err := register.Register(ctx, cl, id, "127.0.0.1"); err != nil {
			return err
		}
		fmt.Printf("probe: %s registered again in %s\n", site, time.Since(t0).Round(100*time.Microsecond))
	}
	for ctx.Err() == nil {
		t0 := time.Now()
		r, err := register.Heartbeat(ctx, cl, id, nil)
		if err != nil {
			return fmt.Errorf("heartbeat: %w", err)
		}
		fmt.Printf("probe: %s heartbeat: %s (%s)\n", site, r.String("message"), time.Since(t0).Round(100*time.Microsecond))
		select {
		case <-time.After(5 * time.Second):
		case <-ctx.Done():
		}
	}
	return nil
}
