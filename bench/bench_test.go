package bench

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
)

// The test binary is its own child when FLAREGO_BENCH_CHILD is set, as
// flarego is with "bench --child".
func TestMain(m *testing.M) {
	if os.Getenv("FLAREGO_BENCH_CHILD") == "1" {
		if err := Child(os.Args[1:], os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func testEnv(t *testing.T, stdout *bytes.Buffer) Env {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("FLAREGO_BENCH_CHILD", "1")
	var progress bytes.Buffer
	return Env{Stdout: stdout, Stderr: &progress, Child: []string{self}}
}

// Each measurement prints its header and one row per case, in the format
// the README's tables are made from; without Python the peer's columns
// are dashes.
func TestMeasurementsPrintTheirTables(t *testing.T) {
	var out bytes.Buffer
	env := testEnv(t, &out)
	if err := Persist(env, PersistOptions{Cases: []string{"pneumonia"}, Repeat: 1}); err != nil {
		t.Fatal(err)
	}
	if err := Model(env, ModelOptions{Batches: []string{"1"}, Steps: 1, Repeat: 1}); err != nil {
		t.Fatal(err)
	}
	if err := FL(env, 2); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	want := []string{
		`^flarego bench persist: median of 1 runs, each in a fresh process; time is the operation alone, RSS is the process's peak$`,
		`^case       op          go s   python s  speedup      go MB  python MB RSS go/py$`,
		`^pneumonia  save  +[0-9.]+ +- +- +[0-9]+ +- +-$`,
		`^pneumonia  load  +[0-9.]+ +- +- +[0-9]+ +- +-$`,
		`^flarego bench model: PneumoniaModel, 3x224x224, 1 timed steps after 2 warm-up, median of 1 fresh processes$`,
		`^op     batch  peer +img/s   go/peer  peak MB  MB/go MB$`,
		`^train  1      go +[0-9.]+ +- +[0-9]+ +-$`,
		`^infer  1      go +[0-9.]+ +- +[0-9]+ +-$`,
		`^flarego bench fl: 2 clients on loopback, PneumoniaModel \([0-9.]+ MB each way\), 1 round, clients return perturbed weights$`,
		`^round [0-9.]+ s \(first task out to model saved\), aggregation [0-9.+Inf]+ MB/s of results, server peak RSS [0-9]+ MB, wall [0-9.]+ s$`,
	}
	if len(lines) != len(want) {
		t.Fatalf("%d lines, want %d:\n%s", len(lines), len(want), out.String())
	}
	for i, w := range want {
		if !regexp.MustCompile(w).MatchString(lines[i]) {
			t.Errorf("line %d: %q does not match %q", i+1, lines[i], w)
		}
	}
}

// A child command line the parent would not make is a usage error.
func TestChildUsage(t *testing.T) {
	for _, args := range [][]string{nil, {"save", "a"}, {"train", "x", "1"}, {"fl-server", "a"}} {
		if err := Child(args, &bytes.Buffer{}); !errors.Is(err, ErrUsage) {
			t.Errorf("%q: %v, want a usage error", args, err)
		}
	}
}
