package main

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/hci"
)

// admin is the operator's console (NVFlare's fl_admin.sh): it logs in to
// the server's admin port and runs commands given as arguments, with -c,
// or one per line on stdin.
func (c *command) admin(args []string) error {
	fs := c.flags("admin", "[--kit ADMIN_KIT | --host H --port P [--with_ssl --ca_cert F --client_cert F --client_key F] [--user U]] [-c CMD ...] [CMD ARGS...]")
	host := fs.String("host", "localhost", "the admin server (admin_host)")
	port := fs.Int("port", 8003, "its admin_port")
	withSSL := fs.Bool("with_ssl", false, "mutual TLS with an admin certificate (a provisioned project; login by certificate)")
	caCert := fs.String("ca_cert", "", "project root CA (rootCA.pem) with --with_ssl")
	clientCert := fs.String("client_cert", "", "admin certificate (client.crt) with --with_ssl")
	clientKey := fs.String("client_key", "", "admin key (client.key) with --with_ssl")
	user := fs.String("user", "admin", "user name (with --with_ssl: the certificate's common name)")
	kitDir := fs.String("kit", "", "an NVFlare 2.4+ admin's startup kit (its folder, or startup/fed_admin.json): log in to that server by certificate")
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
	if *kitDir != "" {
		return c.cellnetAdmin(*kitDir, cmds, *timeout)
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
	console := &hci.Console{Client: cl, Out: c.stdout, UploadDir: *uploadDir, Timeout: *timeout}
	if len(cmds) > 0 {
		for _, cmd := range cmds {
			if err := console.Run(cmd); err != nil {
				return usageIf(err, hci.ErrUsage)
			}
		}
		return nil
	}
	// One command per line on stdin; # starts a comment.
	return usageIf(console.RunScript(os.Stdin), hci.ErrUsage)
}

func adminTLS(ca, cert, key string) (*tls.Config, error) {
	if ca == "" || cert == "" || key == "" {
		return nil, fmt.Errorf("%w: --with_ssl needs --ca_cert, --client_cert and --client_key", errUsage)
	}
	return flare.ClientTLS(ca, cert, key, "")
}
