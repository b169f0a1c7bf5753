package model

import (
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

// ScoreReport says how the rows of a dataset CSV were matched to images.
type ScoreReport struct {
	PathColumn     string
	Matched        int
	RowsWithout    []int    // 1-based data row numbers with no image
	ImagesWithout  []string // images no row names
	DuplicateNames []string // images more than one row names
}

// ScoreCSV copies the CSV from in to out with a Model_Score column: each
// row gets the class-1 logit of the image its path column names — never the
// score of the image in the same position. Paths may be relative to the
// image folder root, absolute, or bare file names when those are unique.
// column names the path column; empty picks the column that matches most
// images. Rows without an image get an empty score.
func ScoreCSV(in io.Reader, out io.Writer, preds []Prediction, root, column string) (*ScoreReport, error) {
	r := csv.NewReader(in)
	r.FieldsPerRecord = -1
	rows, err := r.ReadAll()
	if err != nil {
		return nil, fmt.Errorf("reading dataset CSV: %w", err)
	}
	if len(rows) == 0 {
		return nil, errors.New("dataset CSV is empty")
	}
	header := rows[0]
	for _, h := range header {
		if h == ScoreColumn {
			return nil, fmt.Errorf("dataset CSV already has a %s column", ScoreColumn)
		}
	}
	idx := newPathIndex(preds, root)
	col := -1
	if column != "" {
		for i, h := range header {
			if h == column {
				col = i
			}
		}
		if col < 0 {
			return nil, fmt.Errorf("dataset CSV has no column %q (have %s)", column, strings.Join(header, ", "))
		}
	} else {
		best := 0
		for c := range header {
			n := 0
			for _, row := range rows[1:] {
				if c < len(row) && idx.lookup(row[c]) >= 0 {
					n++
				}
			}
			if n > best {
				best, col = n, c
			}
		}
		if col < 0 {
			return nil, errors.New("no column of the dataset CSV names the images (use --path-column)")
		}
	}
	rep := &ScoreReport{PathColumn: header[col]}
	used := make([]int, len(preds))
	w := csv.NewWriter(out)
	w.Write(append(append([]string{}, header...), ScoreColumn))
	for i, row := range rows[1:] {
		score := ""
		if col < len(row) {
			if p := idx.lookup(row[col]); p >= 0 {
				score = strconv.FormatFloat(float64(preds[p].Logits[len(preds[p].Logits)-1]), 'g', -1, 32)
				used[p]++
				rep.Matched++
			} else {
				rep.RowsWithout = append(rep.RowsWithout, i+1)
			}
		} else {
			rep.RowsWithout = append(rep.RowsWithout, i+1)
		}
		full := append(append([]string{}, row...), make([]string, max(0, len(header)-len(row)))...)
		w.Write(append(full, score))
	}
	w.Flush()
	if err := w.Error(); err != nil {
		return nil, err
	}
	for p, n := range used {
		switch {
		case n == 0:
			rep.ImagesWithout = append(rep.ImagesWithout, preds[p].Sample.Path)
		case n > 1:
			rep.DuplicateNames = append(rep.DuplicateNames, preds[p].Sample.Path)
		}
	}
	return rep, nil
}

// Score returns the class-1 logit as ScoreCSV writes it.
func (p Prediction) Score() float32 { return p.Logits[len(p.Logits)-1] }

type pathIndex struct {
	rel  map[string]int // path relative to root, slash-separated
	base map[string]int // base name → index, -1 when ambiguous
	abs  map[string]int
}

func newPathIndex(preds []Prediction, root string) *pathIndex {
	ix := &pathIndex{rel: map[string]int{}, base: map[string]int{}, abs: map[string]int{}}
	for i, p := range preds {
		if rel, err := filepath.Rel(root, p.Sample.Path); err == nil {
			ix.rel[filepath.ToSlash(rel)] = i
		}
		if a, err := filepath.Abs(p.Sample.Path); err == nil {
			ix.abs[filepath.ToSlash(a)] = i
		}
		b := filepath.Base(p.Sample.Path)
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
