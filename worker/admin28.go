package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/cellnet/console"
	"github.com/flarego/flarego/flare/cellnet/register"
	"github.com/flarego/flarego/flare/hci"
	"github.com/flarego/flarego/flare/site"
	"github.com/flarego/flarego/persistor"
)

// cellnetAdmin is flarego admin on an NVFlare 2.4+ server (NVFlare's or
// flarego's), from an admin's startup kit: it logs in with the kit's
// certificate and runs the commands, or one per line on stdin. The
// server's commands go as they are; submit_job FOLDER uploads a job
// folder (signed with the admin's key), download_job ID [DEST] fetches a
// finished job's results, wait_job ID waits for a job to finish.
func (c *command) cellnetAdmin(kitPath string, cmds []string, timeout time.Duration) error {
	if fi, err := os.Stat(kitPath); err == nil && fi.IsDir() {
		if _, err := os.Stat(filepath.Join(kitPath, "startup", "fed_admin.json")); err == nil {
			kitPath = filepath.Join(kitPath, "startup", "fed_admin.json")
		} else {
			kitPath = filepath.Join(kitPath, "fed_admin.json")
		}
	}
	kit, err := flare.LoadAdminKit(kitPath)
	if err != nil {
		return err
	}
	sk := kit.SiteKit()
	opts, err := site.DialOptions(sk)
	if err != nil {
		return err
	}
	a := kit.Admin
	id, err := register.LoadIdentity(a.Username, a.ProjectName, filepath.Join(kit.Dir, a.ClientCert), filepath.Join(kit.Dir, a.ClientKey),
		filepath.Join(kit.Dir, a.CACert), a.ServerIdentity, func(p string) ([]byte, error) {
			return persistor.ReadRegular(p, 1<<20, "a certificate or key (a few KiB)")
		})
	if err != nil {
		return fmt.Errorf("%s: %w", kit.Path, err)
	}
	ctx, stop := interruptible()
	defer stop()
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	cl, err := console.Dial(dctx, sk.Target(), opts, id)
	cancel()
	if err != nil {
		return fmt.Errorf("%s: logging in to %s as %s: %w", kit.Path, sk.Target(), a.Username, err)
	}
	defer cl.Close()
	downloads := filepath.Join(filepath.Dir(kit.Dir), a.DownloadDir)
	if a.DownloadDir == "" {
		downloads = filepath.Join(filepath.Dir(kit.Dir), "transfer")
	}
	run := func(cmd string) error {
		cctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		return c.adminCommand(cctx, cl, cmd, downloads)
	}
	if len(cmds) > 0 {
		for _, cmd := range cmds {
			if err := run(cmd); err != nil {
				return err
			}
		}
		return nil
	}
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if err := run(line); err != nil {
			return err
		}
	}
	return sc.Err()
}

// adminCommand runs one command and prints its reply.
func (c *command) adminCommand(ctx context.Context, cl *console.Client, cmd, downloads string) error {
	args, err := hci.SplitArgs(cmd)
	if err != nil {
		return fmt.Errorf("%w: %q: %v", errUsage, flare.LogCut(cmd), err)
	}
	if len(args) == 0 {
		return nil
	}
	name := strings.TrimPrefix(args[0], "job_mgmt.")
	switch name {
	case "submit_job":
		if len(args) != 2 {
			return fmt.Errorf("%w: submit_job JOB_FOLDER", errUsage)
		}
		id, err := cl.Submit(ctx, args[1])
		if err != nil {
			return fmt.Errorf("submit_job %s: %w", args[1], err)
		}
		fmt.Fprintf(c.stdout, "Submitted job: %s\n", id)
		return nil
	case "download_job":
		if len(args) < 2 || len(args) > 3 {
			return fmt.Errorf("%w: download_job JOB_ID [DESTINATION]", errUsage)
		}
		dest := downloads
		if len(args) == 3 {
			dest = args[2]
		}
		if err := os.MkdirAll(dest, 0o700); err != nil {
			return err
		}
		out, err := cl.Download(ctx, args[1], dest)
		if err != nil {
			return fmt.Errorf("download_job %s: %w", args[1], err)
		}
		fmt.Fprintf(c.stdout, "Downloaded job %s to %s\n", args[1], out)
		return nil
	case "wait_job":
		if len(args) != 2 {
			return fmt.Errorf("%w: wait_job JOB_ID", errUsage)
		}
		return c.waitJob(ctx, cl, args[1])
	}
	r, err := cl.Do(ctx, cmd)
	if err != nil {
		return fmt.Errorf("%s: %w", args[0], err)
	}
	printReply(c.stdout, r)
	if err := r.Err(); err != nil {
		return fmt.Errorf("%s: %w", args[0], err)
	}
	return nil
}

// waitJob polls a job's meta until it finishes; an error unless it
// completed.
func (c *command) waitJob(ctx context.Context, cl *console.Client, id string) error {
	last := ""
	for {
		r, err := cl.Do(ctx, "get_job_meta "+id)
		if err != nil {
			return err
		}
		if err := r.Err(); err != nil {
			return fmt.Errorf("wait_job %s: %w", id, err)
		}
		meta, _ := r.Meta["job_meta"].(map[string]any)
		st, _ := meta["status"].(string)
		if st != last {
			fmt.Fprintf(c.stdout, "job %s: %s\n", id, st)
			last = st
		}
		if strings.HasPrefix(st, "FINISHED") {
			if st != "FINISHED:COMPLETED" {
				return fmt.Errorf("job %s: %s: %v", id, st, meta["flarego_reason"])
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait_job %s: %w (it is %s)", id, ctx.Err(), st)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// printReply prints a reply's items as NVFlare's console does: strings,
// aligned tables, dicts as JSON; errors and successes by the caller.
func printReply(w io.Writer, r *console.Reply) {
	for _, it := range r.Items {
		switch it["type"] {
		case "string":
			fmt.Fprintln(w, it["data"])
		case "dict":
			b, _ := json.MarshalIndent(it["data"], "", "  ")
			fmt.Fprintln(w, string(b))
		case "table":
			rows, _ := it["rows"].([]any)
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			for _, row := range rows {
				cells, _ := row.([]any)
				var s []string
				for _, cell := range cells {
					s = append(s, fmt.Sprint(cell))
				}
				fmt.Fprintln(tw, strings.Join(s, "\t"))
			}
			tw.Flush()
		case "shutdown":
			fmt.Fprintln(w, it["data"])
		}
	}
}
