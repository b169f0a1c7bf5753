// Command flarego trains, serves and protects a federated medical-imaging
// model: it replaces the Python NVFlare "encrypted model code and weights"
// example with one static binary that speaks the same files and keys.
//
// This package only parses command lines and wires parts together; the
// work is done in packages persistor, model, flare (and its runtimes, wire
// and console), pneumonia (the seed job's components) and bench, and every
// path of the FCP container comes from package fcp.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sync"
)

const usage = `usage: flarego COMMAND [arguments]

Keys and files:
  keygen KEYFILE                  write a new Fernet key (as Fernet.generate_key())
  keygen --age IDFILE             write a model owner's age identity; prints its recipient (age1…)
  encrypt IN KEYFILE OUT          encrypt a file into a Fernet token (--recipient R IN OUT: an age file)
  decrypt IN KEYFILE OUT          decrypt a Fernet token (writes plaintext: you asked for it)
                                  (--identity IDFILE IN OUT: an age file)
  rotate FILE... --old K --new K2 re-encrypt in place under a new key, as MultiFernet.rotate
                                  (--identity ID / --recipient R: the age equivalents)
  unseal [DIR] [-- CMD ARGS...]   check every *.enc under DIR against the FCP key, then run CMD
  pt inspect FILE [--key-file K]  list the tensors of a .pt or encrypted .pt

The model:
  train [--epochs N --lr X ...]   local training on INPUT/datasets/<first>/file_data; writes OUTPUT/model_parameters.pt.enc
  infer WEIGHTS                   scores INPUT/file_data into OUTPUT/dataset.csv (INPUT/dataset.csv + Model_Score)
  samples DIR                     writes synthetic chest X-rays in the FCP input layout
  report DIR [-o report.png]      the training curves under DIR (TensorBoard event files) as one PNG

Federated learning (NVFlare 2.0 wire protocol):
  server -m WS -s fed_server.json [--job APP] [--set k=v]   the FL server (NVFlare's server_train flags);
                                  without --job it runs the apps its admin console deploys
  client -m WS -s fed_client.json --set uid=SITE [--job APP]   a site (NVFlare's client_train flags);
                                  without --job it waits for the server to deploy the app
  admin [--host H --port P] CMD   the operator's console (NVFlare's fl_admin.sh): upload_app APP,
                                  set_run_number N, deploy_app APP all, start_app all, wait_run,
                                  check_status server|client, abort, shutdown all
  simulate JOB_DIR -n N [--data DIR] [--output DIR]   the job's server and N clients in one process over loopback gRPC

Measurements:
  bench persist [--cases ...]     encrypted save and load, side by side with Python (torch + cryptography)
  bench model [--batches 4,16]    training and inference throughput, side by side with PyTorch
  bench fl [--clients 200]        one federated round with many clients returning perturbed weights

KEYFILE is a raw key file or a secret_run_params.json ({"key": "..."}).
Run 'flarego COMMAND -h' for a command's flags.
`

// errUsage makes main print the usage and exit 2.
var errUsage = errors.New("usage")

// usageIf makes err, when it wraps a package's own usage error (pkgUsage),
// a usage error of the command too (exit 2), its message unchanged.
func usageIf(err, pkgUsage error) error {
	if err != nil && errors.Is(err, pkgUsage) {
		return usageError{err}
	}
	return err
}

type usageError struct{ error }

func (e usageError) Unwrap() []error { return []error{errUsage, e.error} }

type command struct {
	stdout, stderr io.Writer
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	// Servers and clients log from many goroutines: one lock for both
	// streams keeps lines whole (and tests' buffers safe).
	var mu sync.Mutex
	c := &command{stdout: &lockedWriter{mu: &mu, w: stdout}, stderr: &lockedWriter{mu: &mu, w: stderr}}
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmds := map[string]func([]string) error{
		"keygen":   c.keygen,
		"encrypt":  c.encrypt,
		"decrypt":  c.decrypt,
		"rotate":   c.rotate,
		"unseal":   c.unseal,
		"pt":       c.pt,
		"bench":    c.bench,
		"train":    c.train,
		"infer":    c.infer,
		"samples":  c.samples,
		"report":   c.report,
		"simulate": c.simulate,
		"server":   c.server,
		"client":   c.client,
		"admin":    c.admin,
	}
	name := args[0]
	if name == "-h" || name == "--help" || name == "help" {
		fmt.Fprint(stdout, usage)
		return 0
	}
	f, ok := cmds[name]
	if !ok {
		fmt.Fprintf(stderr, "flarego: unknown command %q\n\n%s", name, usage)
		return 2
	}
	if err := f(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		if errors.Is(err, errUsage) {
			fmt.Fprintf(stderr, "flarego %s: %v\n", name, err)
			return 2
		}
		fmt.Fprintf(stderr, "flarego %s: %v\n", name, err)
		return 1
	}
	return 0
}

// flags returns a flag set that reports errors instead of exiting.
func (c *command) flags(name, args string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	fs.Usage = func() {
		fmt.Fprintf(c.stderr, "usage: flarego %s %s\n", name, args)
		fs.PrintDefaults()
	}
	return fs
}

// parse parses flags that may come before or after the positional arguments
// and checks their number.
func parse(fs *flag.FlagSet, args []string, min, max int) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, fmt.Errorf("%w: %v", errUsage, err)
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	if len(pos) < min || (max >= 0 && len(pos) > max) {
		fs.Usage()
		return nil, fmt.Errorf("%w: wrong number of arguments", errUsage)
	}
	return pos, nil
}

// lockedWriter serialises writes to w.
type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
