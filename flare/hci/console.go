package hci

import (
	"bufio"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/flarego/flarego/flare"
)

// ErrUsage marks a console command that is malformed (it does not split
// into words, or upload_app has no folder): the operator's mistake, not
// the server's.
var ErrUsage = errors.New("usage")

// Console is the operator's side of the admin console, as NVFlare's admin
// tool (fl_admin.sh) runs it over a logged-in Client: upload_app and
// wait_run are done on this side, every other command on the server, and
// replies are printed as the tool prints them.
type Console struct {
	Client *Client
	// Out receives each command ("> LINE") and its reply.
	Out io.Writer
	// UploadDir is where upload_app finds app folders named by a relative
	// path.
	UploadDir string
	// Timeout bounds wait_run (the whole run).
	Timeout time.Duration
}

// Run runs one command line; an error the server sent is not printed but
// returned, naming the command, for the caller to report once.
func (a *Console) Run(line string) error {
	args, err := SplitArgs(line)
	if err != nil || len(args) == 0 {
		return fmt.Errorf("%w: command %q: %v", ErrUsage, line, err)
	}
	fmt.Fprintf(a.Out, "> %s\n", line)
	if err := a.runArgs(line, args); err != nil {
		return fmt.Errorf("%s: %w", line, err)
	}
	return nil
}

// RunScript runs one command per line of r, stopping at the first error
// and at bye, exit or quit; blank lines and lines starting with # are
// skipped.
func (a *Console) RunScript(r io.Reader) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if line == "bye" || line == "exit" || line == "quit" {
			break
		}
		if err := a.Run(line); err != nil {
			return err
		}
	}
	return sc.Err()
}

func (a *Console) runArgs(line string, args []string) error {
	switch args[0] {
	case "upload_app":
		if len(args) != 2 {
			return fmt.Errorf("%w: upload_app APP_FOLDER", ErrUsage)
		}
		return a.upload(args[1])
	case "wait_run":
		return a.waitRun()
	}
	r, err := a.Client.Do(line)
	if err != nil {
		return err
	}
	a.print(r)
	return r.Err()
}

// upload sends an app folder (under the upload folder) as NVFlare's
// console does: the base64 zip of NAME/..., NAME being the folder's name.
func (a *Console) upload(folder string) error {
	dir := folder
	if !filepath.IsAbs(dir) {
		dir = filepath.Join(a.UploadDir, folder)
	}
	dir = filepath.Clean(dir)
	st, err := os.Stat(dir)
	if err != nil || !st.IsDir() {
		return fmt.Errorf("upload_app: %q is not a folder", dir)
	}
	name := filepath.Base(dir)
	if plain := flare.PlaintextCode(dir); len(plain) > 0 {
		fmt.Fprintf(a.Out, "warning: %s holds model code in plaintext: %s\n", dir, strings.Join(plain, ", "))
	}
	data, err := flare.ZipFolder(dir, name)
	if err != nil {
		return fmt.Errorf("upload_app %s: %w", dir, err)
	}
	r, err := a.Client.Do(JoinArgs([]string{"file_transfer._upload_folder", name, base64.StdEncoding.EncodeToString(data)}))
	if err != nil {
		return err
	}
	a.print(r)
	return r.Err()
}

// waitRun polls check_status server until the server app has stopped,
// and fails if the run ended with an error.
func (a *Console) waitRun() error {
	deadline := time.Now().Add(a.Timeout)
	last := ""
	for {
		r, err := a.Client.Do("check_status server")
		if err != nil {
			return err
		}
		if err := r.Err(); err != nil {
			return err
		}
		status, round, failure := "", "", ""
		for _, s := range r.Strings() {
			if v, ok := strings.CutPrefix(s, "Engine status: "); ok {
				status = v
			}
			if v, ok := strings.CutPrefix(s, "Current round: "); ok {
				round = v
			}
			if v, ok := strings.CutPrefix(s, "Last run ended with: "); ok {
				failure = v
			}
		}
		if now := status + " " + round; now != last {
			if round != "" {
				fmt.Fprintf(a.Out, "server app %s, round %s\n", status, round)
			} else {
				fmt.Fprintf(a.Out, "server app %s\n", status)
			}
			last = now
		}
		switch {
		case status == "stopped" && failure != "":
			return fmt.Errorf("the run failed: %s", failure)
		case status == "stopped":
			return nil
		case status == "":
			return errors.New("wait_run: check_status server did not say the engine status")
		case time.Now().After(deadline):
			return fmt.Errorf("wait_run: the run did not end within %s", a.Timeout)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// print shows a reply as NVFlare's console does: strings, tables and
// dicts, up to an error (where the console stops reading; the caller
// reports it as the command's error).
func (a *Console) print(r *Reply) {
	for _, it := range r.Items {
		switch it.Type {
		case TypeString:
			fmt.Fprintln(a.Out, it.Text())
		case TypeSuccess:
			if t := it.Text(); t != "" {
				fmt.Fprintln(a.Out, t)
			}
			fmt.Fprintln(a.Out, "Done")
		case TypeError:
			return
		case TypeShutdown:
			fmt.Fprintf(a.Out, "server shut down: %s\n", it.Text())
			return
		case TypeDict:
			fmt.Fprintln(a.Out, string(it.Data))
		case TypeTable:
			tw := tabwriter.NewWriter(a.Out, 0, 0, 2, ' ', 0)
			for _, row := range it.Cells() {
				fmt.Fprintln(tw, strings.Join(row, "\t"))
			}
			tw.Flush()
		}
	}
}
