package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/flarego/flarego/bench"
)

// bench runs a measurement of package bench; children are this binary
// run as "bench --child OP ...".
func (c *command) bench(args []string) error {
	if len(args) > 0 && args[0] == "--child" {
		return usageIf(bench.Child(args[1:], c.stdout), bench.ErrUsage)
	}
	if len(args) == 0 || (args[0] != "persist" && args[0] != "model" && args[0] != "fl") {
		return fmt.Errorf("%w: want 'bench persist|model|fl [flags]'", errUsage)
	}
	var run func(bench.Env) error
	switch args[0] {
	case "persist":
		fs := c.flags("bench persist", "[--cases pneumonia,256MB] [--repeat N] [--python PATH]")
		cases := fs.String("cases", "pneumonia,256MB", "state dicts to save and load: pneumonia, 256MB, 2GB")
		repeat := fs.Int("repeat", 3, "runs per measurement (the median is reported)")
		python := fs.String("python", "/usr/bin/python3", "Python with torch and cryptography, for the side-by-side ('' to skip)")
		if _, err := parse(fs, args[1:], 0, 0); err != nil {
			return err
		}
		run = func(env bench.Env) error {
			return bench.Persist(env, bench.PersistOptions{Cases: strings.Split(*cases, ","), Repeat: *repeat, Python: *python})
		}
	case "model":
		fs := c.flags("bench model", "[--batches 4,16] [--steps N] [--repeat N] [--python PATH] [--root DIR]")
		batches := fs.String("batches", "4,16", "batch sizes")
		steps := fs.Int("steps", 10, "timed steps per run (after 2 warm-up steps)")
		repeat := fs.Int("repeat", 3, "runs per measurement (the median is reported)")
		python := fs.String("python", "/usr/bin/python3", "Python with torch, for the side-by-side ('' to skip)")
		root := fs.String("root", defaultDebian13Root(), "Debian 13 root with torch 2.6 and onnxruntime (make debian13-root; '' to skip)")
		if _, err := parse(fs, args[1:], 0, 0); err != nil {
			return err
		}
		run = func(env bench.Env) error {
			return bench.Model(env, bench.ModelOptions{Batches: strings.Split(*batches, ","), Steps: *steps, Repeat: *repeat, Python: *python, Root: *root})
		}
	case "fl":
		fs := c.flags("bench fl", "[--clients N] [--wire 2.0,2.4]")
		clients := fs.Int("clients", 200, "clients")
		wires := fs.String("wire", "2.0,2.4", "wires to measure, one after the other: 2.0 (NVFlare 2.0's gRPC), 2.4 (NVFlare 2.4+'s CellNet)")
		if _, err := parse(fs, args[1:], 0, 0); err != nil {
			return err
		}
		for _, w := range strings.Split(*wires, ",") {
			if w != "2.0" && w != "2.4" {
				return fmt.Errorf("%w: --wire %q: want 2.0 and/or 2.4", errUsage, w)
			}
		}
		run = func(env bench.Env) error {
			for _, w := range strings.Split(*wires, ",") {
				f := bench.FL
				if w == "2.4" {
					f = bench.FL28
				}
				if err := f(env, *clients); err != nil {
					return err
				}
			}
			return nil
		}
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	return run(bench.Env{Stdout: c.stdout, Stderr: c.stderr, Child: []string{self, "bench", "--child"}})
}

// defaultDebian13Root is where make debian13-root puts the Debian 13 peers:
// $FLAREGO_DEBIAN13_ROOT, else ~/.cache/flarego/debian13.
func defaultDebian13Root() string {
	if r := os.Getenv("FLAREGO_DEBIAN13_ROOT"); r != "" {
		return r
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".cache", "flarego", "debian13")
	}
	return ""
}
