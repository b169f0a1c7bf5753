package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"filippo.io/age"
	"github.com/flarego/flarego/fcp"
	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/model"
	"github.com/flarego/flarego/persistor"
)

// modelFlags are the flags train and infer share.
type modelFlags struct {
	loc        fcp.Locations
	spec       string
	keyFile    string
	batch      int
	identity   string   // age identity file: opens weights encrypted to an owner
	recipients []string // age recipients (or recipients files): what is written is encrypted to them
}

func (c *command) modelFlags(fs interface {
	StringVar(*string, string, string, string)
	IntVar(*int, string, int, string)
}) *modelFlags {
	m := &modelFlags{loc: fcp.Default()}
	fs.StringVar(&m.loc.Input, "input", m.loc.Input, "FCP input directory")
	fs.StringVar(&m.loc.Output, "output", m.loc.Output, "FCP output directory")
	fs.StringVar(&m.spec, "spec", "", "model spec (JSON, or encrypted JSON); default: the image's job architecture ($FLAREGO_APP, default /app, + /custom/network.json.enc) when there is one, else the built-in PneumoniaModel")
	fs.StringVar(&m.keyFile, "key-file", "", "key file (default: the FCP secret_run_params.json)")
	fs.IntVar(&m.batch, "batch", 4, "batch size")
	fs.StringVar(&m.identity, "identity", "", "age identity file (flarego keygen --age) that opens weights encrypted to their owner")
	return m
}

// identities reads --identity, if given.
func (m *modelFlags) identities() ([]age.Identity, error) {
	if m.identity == "" {
		return nil, nil
	}
	return persistor.ReadIdentityFile(m.identity)
}

// readWeights reads a checkpoint: plain, a Fernet token (k) or an age file
// (--identity).
func (m *modelFlags) readWeights(path string, k *persistor.Key) (*persistor.Checkpoint, error) {
	ids, err := m.identities()
	if err != nil {
		return nil, err
	}
	return persistor.ReadCheckpointFileWith(path, k, ids)
}

func (m *modelFlags) key() (*persistor.Key, error) {
	if m.keyFile != "" {
		return persistor.ReadKeyFile(m.keyFile)
	}
	return m.loc.KeyFile()
}

// keyAndSpec loads the key, then the spec (decrypting it with the key).
func (m *modelFlags) keyAndSpec() (*persistor.Key, *model.Spec, error) {
	k, err := m.key()
	if err != nil {
		return nil, nil, err
	}
	if m.spec == "" {
		m.spec = m.loc.JobSpec()
	}
	if m.spec == "" {
		return k, model.PneumoniaSpec(), nil
	}
	spec, err := model.LoadSpec(m.spec, k)
	return k, spec, err
}

// interruptible returns a context cancelled by Ctrl-C / SIGTERM.
func interruptible() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(context.Background())
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		select {
		case s := <-sig:
			cancel(fmt.Errorf("%w by %v", flare.ErrInterrupted, s))
		case <-ctx.Done():
		}
	}()
	return ctx, func() {
		signal.Stop(sig)
		cancel(context.Canceled)
	}
}

func (c *command) train(args []string) error {
	fs := c.flags("train", "[flags]")
	m := c.modelFlags(fs)
	epochs := fs.Int("epochs", 5, "epochs")
	lr := fs.Float64("lr", 0.01, "Adam learning rate")
	seed := fs.Uint64("seed", 1, "seed for initialisation, shuffling and augmentation")
	weights := fs.String("weights", "", "initial weights (.pt or encrypted .pt); default: a fresh initialisation")
	noAugment := fs.Bool("no-augment", false, "train without RandomRotation")
	fs.StringVar(&m.loc.TBLogs, "tb-logs", "", tbLogsUsage)
	fs.Func("recipient", "encrypt the trained model to this age recipient (age1…, or a recipients file) instead of the Fernet key; repeatable", func(s string) error {
		m.recipients = append(m.recipients, s)
		return nil
	})
	if _, err := parse(fs, args, 0, 0); err != nil {
		return err
	}
	// FCP's run parameters override the defaults; flags given override both.
	rp, err := m.loc.RunParams()
	if err != nil {
		return err
	}
	if rp.Path != "" {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		if rp.Epochs != nil && !set["epochs"] {
			*epochs = *rp.Epochs
		}
		if rp.LR != nil && !set["lr"] {
			*lr = *rp.LR
		}
		if rp.Batch != nil && !set["batch"] {
			m.batch = *rp.Batch
		}
		fmt.Fprintf(c.stderr, "run parameters: %s; training with epochs=%d lr=%g batch=%d (flags given win)\n", rp, *epochs, *lr, m.batch)
	}
	cfg := model.TrainConfig{
		Epochs: *epochs, LR: *lr, Batch: m.batch, Seed: *seed, Augment: !*noAugment,
		Warn: func(msg string) { fmt.Fprintln(c.stderr, "warning:", msg) },
	}
	if err := cfg.Check(); err != nil {
		return fmt.Errorf("%w: %v (--epochs, --lr, --batch)", errUsage, err)
	}
	start := time.Now()
	k, spec, err := m.keyAndSpec()
	if err != nil {
		return err
	}
	recipients, err := parseRecipientFlags(m.recipients)
	if err != nil {
		return err
	}
	if err := checkOutputDir(m.loc.Output); err != nil {
		return err
	}
	root, err := m.loc.TrainingFolder()
	if err != nil {
		return err
	}
	classes, samples, err := model.ImageFolder(root)
	if err != nil {
		return err
	}
	if len(classes) < 2 {
		return fmt.Errorf("%s has one class (%s); training needs at least two", root, classes[0])
	}
	var sd *persistor.StateDict
	if *weights != "" {
		ck, err := m.readWeights(*weights, k)
		if err != nil {
			return err
		}
		sd = ck.Model
	} else if sd, err = model.Init(spec, *seed); err != nil {
		return err
	}
	net, err := model.NewNet(spec, sd, m.batch)
	if err != nil {
		if *weights != "" {
			return fmt.Errorf("%s: %w", *weights, err)
		}
		return err
	}
	fmt.Fprintf(c.stderr, "training %s on %d images in %d classes (%s) from %s; ready in %s\n",
		spec.Name, len(samples), len(classes), strings.Join(classes, ", "), root, time.Since(start).Round(time.Millisecond))
	curves := c.trainCurves(m.loc.TensorBoardDir())
	defer curves.Close()
	cfg.Progress = func(s model.EpochStats) { fmt.Fprintln(c.stderr, s); c.epochCurves(curves, s) }
	ctx, stop := interruptible()
	defer stop()
	steps, err := model.Train(ctx, net, samples, cfg)
	if err != nil {
		if ctx.Err() != nil {
			return errors.New("interrupted: training stopped, no weights written")
		}
		return err
	}
	if err := net.CheckFinite(); err != nil {
		return fmt.Errorf("not saving the weights: %w", err)
	}
	out := m.loc.GlobalModel()
	p := &persistor.SecuredPersistor{Path: out, Key: k, Recipients: recipients, ModelName: spec.Name}
	if err := p.Save(&persistor.Checkpoint{Model: net.StateDict()}); err != nil {
		return err
	}
	if len(recipients) > 0 {
		fmt.Fprintf(c.stderr, "%d steps per epoch; wrote %s (age, to %d recipient(s))\n", steps, out, len(recipients))
	} else {
		fmt.Fprintf(c.stderr, "%d steps per epoch; wrote %s (encrypted)\n", steps, out)
	}
	return nil
}

func (c *command) infer(args []string) error {
	fs := c.flags("infer", "WEIGHTS [flags]")
	m := c.modelFlags(fs)
	column := fs.String("path-column", "", "dataset.csv column that names each image (default: the one that matches most images)")
	pos, err := parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	k, spec, err := m.keyAndSpec()
	if err != nil {
		return err
	}
	ck, err := m.readWeights(pos[0], k)
	if err != nil {
		return err
	}
	net, err := model.NewNet(spec, ck.Model, m.batch)
	if err != nil {
		return fmt.Errorf("%s: %w", pos[0], err)
	}
	// Everything that can be checked is checked before the images are
	// scored: the output folder, the CSV and its path column.
	if err := checkOutputDir(m.loc.Output); err != nil {
		return err
	}
	root := m.loc.InferenceFolder()
	_, samples, err := model.ImageFolder(root)
	if err != nil {
		return err
	}
	csvIn := m.loc.DatasetCSV()
	in, err := persistor.OpenRegular(csvIn)
	if err != nil {
		return err
	}
	defer in.Close()
	ctx, stop := interruptible()
	defer stop()
	plan, err := model.PlanScores(ctx, in, samples, root, *column)
	if err != nil {
		return fmt.Errorf("%s: %w", csvIn, err)
	}
	start := time.Now()
	preds, err := model.Predict(ctx, net, samples, m.batch, func(msg string) { fmt.Fprintln(c.stderr, "warning:", msg) })
	if err != nil {
		if ctx.Err() != nil {
			return errors.New("interrupted: scoring stopped, nothing written")
		}
		return err
	}
	fmt.Fprintf(c.stderr, "scored %d images in %.1f s\n", len(preds), time.Since(start).Seconds())
	if _, err := in.Seek(0, io.SeekStart); err != nil {
		return err
	}
	csvOut := m.loc.ScoresCSV()
	var rep *model.ScoreReport
	if err := persistor.WriteFileAtomic(csvOut, 0o644, func(w io.Writer) error {
		rep, err = plan.Write(ctx, in, w, preds)
		if err != nil {
			return fmt.Errorf("%s: %w", csvIn, err)
		}
		return nil
	}); err != nil {
		return err
	}
	fmt.Fprintf(c.stderr, "matched %d rows by column %q\n", rep.Matched, rep.PathColumn)
	if rep.Unmatched > 0 {
		rows := listInts(rep.UnmatchedRows)
		if rep.Unmatched > len(rep.UnmatchedRows) {
			rows += ", ..."
		}
		fmt.Fprintf(c.stderr, "warning: %d rows name no image (rows %s); their %s is empty\n", rep.Unmatched, rows, model.ScoreColumn)
	}
	if len(rep.ImagesWithout) > 0 {
		fmt.Fprintf(c.stderr, "warning: %d images have no row: %s\n", len(rep.ImagesWithout), listStrings(rep.ImagesWithout))
	}
	if len(rep.DuplicateNames) > 0 {
		fmt.Fprintf(c.stderr, "warning: %d images are named by more than one row: %s\n", len(rep.DuplicateNames), listStrings(rep.DuplicateNames))
	}
	fmt.Fprintf(c.stderr, "wrote %s\n", csvOut)
	return nil
}

// checkOutputDir fails now, not after the long work, when dir cannot take
// the output: it must be an existing folder in which files can be made.
func checkOutputDir(dir string) error {
	st, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("output folder: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("output folder %s is not a directory", dir)
	}
	f, err := os.CreateTemp(dir, ".flarego-check-*")
	if err != nil {
		return fmt.Errorf("output folder %s is not writable: %w", dir, err)
	}
	f.Close()
	return os.Remove(f.Name())
}

func listInts(v []int) string {
	s := make([]string, 0, 10)
	for i, x := range v {
		if i == 10 {
			s = append(s, "...")
			break
		}
		s = append(s, fmt.Sprint(x))
	}
	return strings.Join(s, ", ")
}

func listStrings(v []string) string {
	if len(v) > 10 {
		return strings.Join(v[:10], ", ") + ", ..."
	}
	return strings.Join(v, ", ")
}

func (c *command) samples(args []string) error {
	fs := c.flags("samples", "[--n N] [--seed S] DIR")
	n := fs.Int("n", 20, "images per class")
	seed := fs.Uint64("seed", 1, "seed")
	pos, err := parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	if *n <= 0 || *n > 100000 {
		return fmt.Errorf("%w: --n must be 1..100000", errUsage)
	}
	if err := model.WriteSyntheticSite(pos[0], *n, *seed); err != nil {
		return err
	}
	fmt.Fprintf(c.stderr, "wrote synthetic chest X-rays to %s: datasets/cxr/file_data (training), file_data and dataset.csv (inference), %d per class each\n", pos[0], *n)
	return nil
}
