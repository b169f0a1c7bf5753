package model

import (
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"path"
	"path/filepath"
	"strconv"
	"strings"
)

// ScoreColumn is the column FCP inference appends: the class-1 logit.
const ScoreColumn = "Model_Score"

// Bounds on a dataset CSV: it is read twice as a stream, never whole, and
// keeps per row only counts.
const (
	maxCSVRecordBytes = 1 << 20 // one row, quoted newlines included
	maxCSVFields      = 4096
	maxCSVRows        = 1 << 24
)

var errCSVRecordTooLong = fmt.Errorf("a row is longer than %d bytes", maxCSVRecordBytes)

// ScoreReport says how the rows of a dataset CSV were matched to images.
type ScoreReport struct {
	PathColumn     string
	Matched        int
	Unmatched      int      // data rows with no image
	UnmatchedRows  []int    // the first ten of them, 1-based
	ImagesWithout  []string // images no row names
	DuplicateNames []string // images more than one row names
}

// A ScorePlan is a dataset CSV checked before any image is scored: its
// header, and the column that names each image.
type ScorePlan struct {
	header []string
	col    int
	root   string
}

// PlanScores reads the dataset CSV from in once, as a stream, so that
// inference fails before the long work when the CSV cannot take the scores:
// it must have a header and no Model_Score column yet, and column (or, when
// column is empty, the column that names most of the samples) must exist.
// Paths in the CSV may be relative to root, absolute, or bare file names
// when those are unique.
func PlanScores(ctx context.Context, in io.Reader, samples []Sample, root, column string) (*ScorePlan, error) {
	r := newCSVReader(in)
	header, err := r.read()
	if err == io.EOF {
		return nil, errors.New("dataset CSV is empty")
	}
	if err != nil {
		return nil, err
	}
	header = append([]string(nil), header...) // the reader reuses its slice
	for _, h := range header {
		if h == ScoreColumn {
			return nil, fmt.Errorf("dataset CSV already has a %s column", ScoreColumn)
		}
	}
	p := &ScorePlan{header: header, col: -1, root: root}
	if column != "" {
		for i, h := range header {
			if h == column {
				p.col = i
			}
		}
		if p.col < 0 {
			return nil, fmt.Errorf("dataset CSV has no column %q (have %s)", column, strings.Join(header, ", "))
		}
	}
	idx := newPathIndex(samples, root)
	counts := make([]int, len(header))
	for {
		row, err := r.read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		if r.rows%4096 == 0 && ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if column != "" {
			continue // read on only to check the whole file
		}
		for c := range min(len(row), len(header)) {
			if idx.lookup(row[c]) >= 0 {
				counts[c]++
			}
		}
	}
	if column == "" {
		best := 0
		for c, n := range counts {
			if n > best {
				best, p.col = n, c
			}
		}
		if p.col < 0 {
			return nil, errors.New("no column of the dataset CSV names the images (use --path-column)")
		}
	}
	return p, nil
}

// Write reads the same CSV again from in and copies it to out with a
// Model_Score column: each row gets the class-1 logit of the image its path
// column names — never the score of the image in the same position. Rows
// without an image (or whose image could not be read) get an empty score.
func (p *ScorePlan) Write(ctx context.Context, in io.Reader, out io.Writer, preds []Prediction) (*ScoreReport, error) {
	samples := make([]Sample, len(preds))
	for i, pr := range preds {
		samples[i] = pr.Sample
	}
	idx := newPathIndex(samples, p.root)
	r := newCSVReader(in)
	if _, err := r.read(); err != nil {
		return nil, fmt.Errorf("dataset CSV changed while it was scored: %w", err)
	}
	rep := &ScoreReport{PathColumn: p.header[p.col]}
	used := make([]int, len(preds))
	w := csv.NewWriter(out)
	if err := w.Write(append(append([]string{}, p.header...), ScoreColumn)); err != nil {
		return nil, err
	}
	var line []string
	for {
		row, err := r.read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		if r.rows%4096 == 0 && ctx.Err() != nil {
			return nil, ctx.Err()
		}
		score := ""
		if p.col < len(row) {
			if i := idx.lookup(row[p.col]); i >= 0 {
				score = strconv.FormatFloat(float64(preds[i].Score()), 'g', -1, 32)
				used[i]++
				rep.Matched++
			}
		}
		if score == "" {
			rep.Unmatched++
			if len(rep.UnmatchedRows) < 10 {
				rep.UnmatchedRows = append(rep.UnmatchedRows, r.rows-1)
			}
		}
		line = append(line[:0], row...)
		for len(line) < len(p.header) {
			line = append(line, "")
		}
		if err := w.Write(append(line, score)); err != nil {
			return nil, err
		}
	}
	w.Flush()
	if err := w.Error(); err != nil {
		return nil, err
	}
	for i, n := range used {
		switch {
		case n == 0:
			rep.ImagesWithout = append(rep.ImagesWithout, preds[i].Sample.Path)
		case n > 1:
			rep.DuplicateNames = append(rep.DuplicateNames, preds[i].Sample.Path)
		}
	}
	return rep, nil
}

// csvReader reads a dataset CSV record by record within the bounds above.
type csvReader struct {
	r    *csv.Reader
	lim  *limitedReader
	rows int // records read, the header included
}

func newCSVReader(in io.Reader) *csvReader {
	lim := &limitedReader{r: in}
	r := csv.NewReader(lim)
	r.FieldsPerRecord = -1
	r.ReuseRecord = true
	return &csvReader{r: r, lim: lim}
}

func (c *csvReader) read() ([]string, error) {
	// The csv reader buffers a few KiB ahead of the record it parses.
	c.lim.max = c.r.InputOffset() + maxCSVRecordBytes + 64<<10
	row, err := c.r.Read()
	if err == io.EOF {
		return nil, err
	}
	if errors.Is(err, errCSVRecordTooLong) {
		return nil, fmt.Errorf("reading dataset CSV: row %d: %w", c.rows+1, err)
	}
	if err != nil {
		return nil, fmt.Errorf("reading dataset CSV: %w", err)
	}
	c.rows++
	if len(row) > maxCSVFields {
		return nil, fmt.Errorf("reading dataset CSV: row %d has %d fields (at most %d)", c.rows, len(row), maxCSVFields)
	}
	if c.rows > maxCSVRows {
		return nil, fmt.Errorf("reading dataset CSV: more than %d rows", maxCSVRows)
	}
	return row, nil
}

// limitedReader fails once more than max bytes in all have been read.
type limitedReader struct {
	r   io.Reader
	n   int64
	max int64
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.n >= l.max {
		return 0, errCSVRecordTooLong
	}
	if int64(len(p)) > l.max-l.n {
		p = p[:l.max-l.n]
	}
	n, err := l.r.Read(p)
	l.n += int64(n)
	return n, err
}

// Score returns the class-1 logit as ScoreCSV writes it.
func (p Prediction) Score() float32 { return p.Logits[len(p.Logits)-1] }

type pathIndex struct {
	rel  map[string]int // path relative to root, slash-separated
	base map[string]int // base name → index, -1 when ambiguous
	abs  map[string]int
}

func newPathIndex(samples []Sample, root string) *pathIndex {
	ix := &pathIndex{rel: map[string]int{}, base: map[string]int{}, abs: map[string]int{}}
	for i, s := range samples {
		if rel, err := filepath.Rel(root, s.Path); err == nil {
			ix.rel[filepath.ToSlash(rel)] = i
		}
		if a, err := filepath.Abs(s.Path); err == nil {
			ix.abs[filepath.ToSlash(a)] = i
		}
		b := filepath.Base(s.Path)
		if _, dup := ix.base[b]; dup {
			ix.base[b] = -1
		} else {
			ix.base[b] = i
		}
	}
	return ix
}

// lookup finds the image a CSV cell names, or -1.
func (ix *pathIndex) lookup(cell string) int {
	c := strings.TrimSpace(strings.ReplaceAll(cell, `\`, "/"))
	if c == "" {
		return -1
	}
	c = path.Clean(c)
	if i, ok := ix.rel[strings.TrimPrefix(c, "./")]; ok {
		return i
	}
	if i, ok := ix.abs[c]; ok {
		return i
	}
	// A path from another root (e.g. /input/file_data/NORMAL/x.png): match
	// its longest tail that is a relative path we know.
	for p := strings.IndexByte(c, '/'); p >= 0; {
		if i, ok := ix.rel[c[p+1:]]; ok {
			return i
		}
		q := strings.IndexByte(c[p+1:], '/')
		if q < 0 {
			break
		}
		p += q + 1
	}
	if !strings.Contains(c, "/") {
		if i, ok := ix.base[c]; ok && i >= 0 {
			return i
		}
	}
	return -1
}
