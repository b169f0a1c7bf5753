package main

import (
	"fmt"
	"os"
	"time"

	"path/filepath"
	"testing"

	"github.com/fernet/fernet-go"
	"github.com/flarego/flarego/persistor"

	"github.com/rogpeppe/go-internal/testscript"
)

func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"flarego": func() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) },
		// token-at KEYFILE OFFSET TEXT prints a token signed at now+OFFSET,
		// for testing timestamps (Python's fixtures age).
		"token-at": func() {
			k, err := persistor.ReadKeyFile(os.Args[1])
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			d, err := time.ParseDuration(os.Args[2])
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			fkey, err := fernet.DecodeKey(k.Encode())
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			tok, err := fernet.EncryptAndSignAtTime([]byte(os.Args[3]), fkey, time.Now().Add(d))
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			os.Stdout.Write(tok)
			os.Exit(0)
		},
	})
}

// TestScripts runs the command-line sessions in testdata/script. $TESTDATA
// is the repository's testdata folder; the FCP roots point into $WORK so
// that no test touches /input, /output or /server-credentials.
func TestScripts(t *testing.T) {
	td, err := filepath.Abs(filepath.Join("..", "testdata"))
	if err != nil {
		t.Fatal(err)
	}
	testscript.Run(t, testscript.Params{
		Dir: filepath.Join("testdata", "script"),
		Setup: func(env *testscript.Env) error {
			env.Setenv("TESTDATA", td)
			env.Setenv("JOB", filepath.Join(td, "..", "job", "pneumonia"))
			env.Setenv("FLAREGO_INPUT", filepath.Join(env.WorkDir, "input"))
			env.Setenv("FLAREGO_OUTPUT", filepath.Join(env.WorkDir, "output"))
			env.Setenv("FLAREGO_SERVER_CREDENTIALS", filepath.Join(env.WorkDir, "server-credentials"))
			return nil
		},
	})
}
