package main

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/hci"
)

// admin is the operator's console (NVFlare's fl_admin.sh): it logs in to
// the server's admin port and runs commands given as arguments, with -c,
// or one per line on stdin.
func (c *command) admin(args []string) error {
	fs := c.flags("admin", "[--host H --port P] [--with_ssl --ca_cert F --client_cert F --client_key F] [--user U] [-c CMD ...] [CMD ARGS...]")
	host := fs.String("host", "localhost", "the admin server (admin_host)")
	port := fs.Int("port", 8003, "its admin_port")
	withSSL := fs.Bool("with_ssl", false, "mutual TLS with an admin certificate (a provisioned project; login by certificate)")
	caCert := fs.String("ca_cert", "", "project root CA (rootCA.pem) with --with_ssl")
	clientCert := fs.String("client_cert", "", "admin certificate (client.crt) with --with_ssl")
	clientKey := fs.String("client_key", "", "admin key (client.key) with --with_ssl")
	user := fs.String("user", "admin", "user name (with --with_ssl: the certificate's common name)")
	pwFile := fs.String("password-file", "", "file holding the POC password (default: $FLAREGO_ADMIN_PASSWORD, else NVFlare's POC password \"admin\")")
	uploadDir := fs.String("upload_dir", ".", "where upload_app finds app folders")
	timeout := fs.Duration("timeout", 10*time.Minute, "limit for one command (wait_run: for the whole run)")
	var cmds stringList
	fs.Var(&cmds, "c", "a command (repeatable; run in order, stopping at the first error)")
	// Flags end at the command: its words are its own, even those that
	// look like flags ("set_run_number -1").
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	var err error
	if pos := fs.Args(); len(pos) > 0 {
		cmds = append(cmds, hci.JoinArgs(pos))
	}
	cl := &hci.Client{Addr: net.JoinHostPort(*host, strconv.Itoa(*port)), Timeout: *timeout}
	if *withSSL {
		if cl.TLS, err = adminTLS(*caCert, *clientCert, *clientKey); err != nil {
			return err
		}
		err = cl.CertLogin(*user)
	} else {
		pw := os.Getenv("FLAREGO_ADMIN_PASSWORD")
		if *pwFile != "" {
			b, err := os.ReadFile(*pwFile)
			if err != nil {
				return err
			}
			pw = strings.TrimRight(string(b), "\r\n")
		} else if pw == "" {
			pw = "admin"
		}
		err = cl.Login(*user, pw)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", cl.Addr, err)
	}
	defer cl.Do("_logout")
	ac := &adminConsole{cl: cl, out: c.stdout, uploadDir: *uploadDir, timeout: *timeout}
	if len(cmds) > 0 {
		for _, cmd := range cmds {
			if err := ac.run(cmd); err != nil {
				return err
			}
		}
		return nil
	}
	// One command per line on stdin; # starts a comment.
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if line == "bye" || line == "exit" || line == "quit" {
			break
		}
		if err := ac.run(line); err != nil {
			return err
		}
	}
	return sc.Err()
}

func adminTLS(ca, cert, key string) (*tls.Config, error) {
	if ca == "" || cert == "" || key == "" {
		return nil, fmt.Errorf("%w: --with_ssl needs --ca_cert, --client_cert and --client_key", errUsage)
	}
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return nil, fmt.Errorf("admin certificate: %w", err)
	}
	pem, err := os.ReadFile(ca)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no PEM certificate", ca)
	}
	// NVFlare's console does not check the host name (its certificates
	// name the server by project); the chain is still verified.
	return &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: pool, MinVersion: tls.VersionTLS12,
		InsecureSkipVerify: true, VerifyConnection: flare.VerifyServer(pool, "")}, nil
}

// adminConsole runs console commands; upload_app and wait_run are done on
// this side, every other command on the server.
type adminConsole struct {
	cl        *hci.Client
	out       io.Writer
	uploadDir string
	timeout   time.Duration
}

// run runs one command line; an error the server sent is not printed but
// returned, naming the command, for the caller to report once.
func (a *adminConsole) run(line string) error {
	args, err := hci.SplitArgs(line)
	if err != nil || len(args) == 0 {
		return fmt.Errorf("%w: command %q: %v", errUsage, line, err)
	}
	fmt.Fprintf(a.out, "> %s\n", line)
	if err := a.runArgs(line, args); err != nil {
		return fmt.Errorf("%s: %w", line, err)
	}
	return nil
}

func (a *adminConsole) runArgs(line string, args []string) error {
	switch args[0] {
	case "upload_app":
		if len(args) != 2 {
			return fmt.Errorf("%w: upload_app APP_FOLDER", errUsage)
		}
		return a.upload(args[1])
	case "wait_run":
		return a.waitRun()
	}
	r, err := a.cl.Do(line)
	if err != nil {
		return err
	}
	a.print(r)
	return r.Err()
}

// upload sends an app folder (under the upload folder) as NVFlare's
// console does: the base64 zip of NAME/..., NAME being the folder's name.
func (a *adminConsole) upload(folder string) error {
	dir := folder
	if !filepath.IsAbs(dir) {
		dir = filepath.Join(a.uploadDir, folder)
	}
	dir = filepath.Clean(dir)
	st, err := os.Stat(dir)
	if err != nil || !st.IsDir() {
		return fmt.Errorf("upload_app: %q is not a folder", dir)
	}
	name := filepath.Base(dir)
	if plain := flare.PlaintextCode(dir); len(plain) > 0 {
		fmt.Fprintf(a.out, "warning: %s holds model code in plaintext: %s\n", dir, strings.Join(plain, ", "))
	}
	data, err := flare.ZipFolder(dir, name)
	if err != nil {
		return fmt.Errorf("upload_app %s: %w", dir, err)
	}
	r, err := a.cl.Do(hci.JoinArgs([]string{"file_transfer._upload_folder", name, base64.StdEncoding.EncodeToString(data)}))
	if err != nil {
		return err
	}
	a.print(r)
	return r.Err()
}

// waitRun polls check_status server until the server app has stopped,
// and fails if the run ended with an error.
func (a *adminConsole) waitRun() error {
	deadline := time.Now().Add(a.timeout)
	last := ""
	for {
		r, err := a.cl.Do("check_status server")
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
				fmt.Fprintf(a.out, "server app %s, round %s\n", status, round)
			} else {
				fmt.Fprintf(a.out, "server app %s\n", status)
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
			return fmt.Errorf("wait_run: the run did not end within %s", a.timeout)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// print shows a reply as NVFlare's console does: strings, tables and
// dicts, up to an error (where the console stops reading; the caller
// reports it as the command's error).
func (a *adminConsole) print(r *hci.Reply) {
	for _, it := range r.Items {
		switch it.Type {
		case hci.TypeString:
			fmt.Fprintln(a.out, it.Text())
		case hci.TypeSuccess:
			if t := it.Text(); t != "" {
				fmt.Fprintln(a.out, t)
			}
			fmt.Fprintln(a.out, "Done")
		case hci.TypeError:
			return
		case hci.TypeShutdown:
			fmt.Fprintf(a.out, "server shut down: %s\n", it.Text())
			return
		case hci.TypeDict:
			fmt.Fprintln(a.out, string(it.Data))
		case hci.TypeTable:
			tw := tabwriter.NewWriter(a.out, 0, 0, 2, ' ', 0)
			for _, row := range it.Cells() {
				fmt.Fprintln(tw, strings.Join(row, "\t"))
			}
			tw.Flush()
		}
	}
}
