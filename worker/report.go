//go:build !noreport

package main

import (
	"fmt"
	"image/color"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/palette/brewer"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/text"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"

	"github.com/flarego/flarego/flare/server"
	"github.com/flarego/flarego/internal/tensorboard"
	"github.com/flarego/flarego/persistor"
	"github.com/flarego/flarego/pneumonia"
)

// The report's layout: panels of reportTileW × reportTileH in at most two
// columns under a header, at vgimg's 96 dots per inch.
const (
	reportTileW   = 6 * vg.Inch
	reportTileH   = 4.25 * vg.Inch
	reportHeaderH = 0.55 * vg.Inch
	// maxReportFiles bounds the event files one report reads.
	maxReportFiles = 10000
)

// report draws the curves of the event files under DIR into one PNG.
func (c *command) report(args []string) error {
	fs := c.flags("report", "DIR [-o report.png]")
	out := fs.String("o", "report.png", "the PNG to write")
	pos, err := parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	if !strings.EqualFold(filepath.Ext(*out), ".png") {
		return fmt.Errorf("%w: -o %s: the report is a PNG (name it *.png)", errUsage, *out)
	}
	dir := pos[0]
	runs, files, err := readRuns(dir, func(err error) { fmt.Fprintf(c.stderr, "warning: %v\n", err) })
	if err != nil {
		return err
	}
	if files == 0 {
		return fmt.Errorf("no TensorBoard event files under %s", dir)
	}
	img, panels, err := drawReport(dir, runs, files)
	if err != nil {
		return err
	}
	if err := persistor.WriteFileAtomic(*out, 0o644, func(w io.Writer) error {
		_, err := vgimg.PngCanvas{Canvas: img}.WriteTo(w)
		return err
	}); err != nil {
		return err
	}
	fmt.Fprintf(c.stderr, "wrote %s: %s from %d run(s), %d event file(s)\n", *out, strings.Join(panels, ", "), len(runs), files)
	return nil
}

// tbRun is one TensorBoard run: the event files of one folder.
type tbRun struct {
	name   string                       // the folder under DIR ("." for DIR itself)
	series map[string]map[int64]float64 // tag → step → value (the last one written)
}

// points is a tag's values, by step.
func (r *tbRun) points(tag string) plotter.XYs {
	m := r.series[tag]
	xys := make(plotter.XYs, 0, len(m))
	for step, v := range m {
		xys = append(xys, plotter.XY{X: float64(step), Y: v})
	}
	sort.Slice(xys, func(i, j int) bool { return xys[i].X < xys[j].X })
	return xys
}

// last is a tag's value at its largest step.
func (r *tbRun) last(tag string) (float64, bool) {
	xys := r.points(tag)
	if len(xys) == 0 {
		return 0, false
	}
	return xys[len(xys)-1].Y, true
}

// readRuns reads every event file under dir (a file whose name holds
// "tfevents"), one run per folder, sorted by name. A damaged file is a
// warning, its events before the damage kept.
func readRuns(dir string, warn func(error)) ([]*tbRun, int, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, 0, err
	}
	if !st.IsDir() {
		return nil, 0, fmt.Errorf("%s is not a directory", dir)
	}
	var paths []string
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			warn(err)
			if d != nil && d.IsDir() && p != dir {
				return fs.SkipDir
			}
			return nil
		}
		if d.Type().IsRegular() && strings.Contains(d.Name(), "tfevents") {
			if len(paths) == maxReportFiles {
				return fmt.Errorf("more than %d event files under %s", maxReportFiles, dir)
			}
			paths = append(paths, p)
		}
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	sort.Strings(paths) // a folder's files by time: later values of a step win
	byName := map[string]*tbRun{}
	var runs []*tbRun
	for _, p := range paths {
		events, err := tensorboard.ReadFile(p)
		if err != nil {
			warn(fmt.Errorf("%v (using the %d event(s) before it)", err, len(events)))
		}
		name, _ := filepath.Rel(dir, filepath.Dir(p))
		name = filepath.ToSlash(name)
		r := byName[name]
		if r == nil {
			r = &tbRun{name: name, series: map[string]map[int64]float64{}}
			byName[name] = r
			runs = append(runs, r)
		}
		for _, e := range events {
			for _, v := range e.Values {
				if r.series[v.Tag] == nil {
					r.series[v.Tag] = map[int64]float64{}
				}
				r.series[v.Tag][e.Step] = float64(v.Value)
			}
		}
	}
	sort.Slice(runs, func(i, j int) bool { return runs[i].name < runs[j].name })
	return runs, len(paths), nil
}

// runLabel is how the report names a run: its folder, or for DIR's own
// files (flarego train's) DIR's name.
func runLabel(dir, name string) string {
	if name != "." {
		return name
	}
	if abs, err := filepath.Abs(dir); err == nil {
		if b := filepath.Base(abs); b != "/" && b != "." {
			return b
		}
	}
	return "train"
}

// drawReport draws the panels that have data: the sites' training loss
// and accuracy, the server's per-round means, the cross-site matrix.
func drawReport(dir string, runs []*tbRun, files int) (*vgimg.Canvas, []string, error) {
	var plots []*plot.Plot
	var names []string
	add := func(p *plot.Plot, name string) {
		if p != nil {
			plots, names = append(plots, p), append(names, name)
		}
	}
	// The server's per-round means go on the sites' curves, at the last
	// epoch of each round, when the steps tell how many epochs a round has.
	epochs, overlay := epochsPerRound(runs)
	add(curvePlot(dir, runs, pneumonia.TagTrainLoss, server.TagTrainLoss, epochs, "Training loss per run", "loss (mean cross-entropy)", false), "loss")
	add(curvePlot(dir, runs, pneumonia.TagTrainAccuracy, server.TagTrainAccuracy, epochs, "Training accuracy per run", "accuracy (training batches)", true), "accuracy")
	add(curvePlot(dir, runs, pneumonia.TagImagesPerSecond, "", 0, "Training throughput per run", "images per second (decoding included)", false), "throughput")
	if !overlay {
		add(serverPlot(runs), "server rounds")
	}
	hm, err := matrixPlot(runs)
	if err != nil {
		return nil, nil, err
	}
	add(hm, "cross-site matrix")
	if len(plots) == 0 {
		return nil, nil, fmt.Errorf("the event files under %s hold none of the curves a report draws (%s, %s, %s, %s)",
			dir, pneumonia.TagTrainLoss, pneumonia.TagTrainAccuracy, server.TagTrainLoss, server.CrossSiteTag("OWNER", "SITE"))
	}
	cols := min(len(plots), 2)
	rows := (len(plots) + cols - 1) / cols
	img := vgimg.New(vg.Length(cols)*reportTileW, vg.Length(rows)*reportTileH+reportHeaderH)
	dc := draw.New(img)
	dc.SetColor(color.White)
	dc.Fill(dc.Rectangle.Path())
	header := plot.New().Title.TextStyle
	header.Font.Size = vg.Points(15)
	header.XAlign, header.YAlign = draw.XCenter, draw.YCenter
	dc.FillText(header, vg.Point{X: dc.Center().X, Y: dc.Max.Y - reportHeaderH/2},
		fmt.Sprintf("Training curves: %s (%d run(s), %d event file(s))", dir, len(runs), files))
	body := draw.Crop(dc, 0, 0, 0, -reportHeaderH)
	tiles := draw.Tiles{Cols: cols, Rows: rows, PadX: vg.Millimeter * 4, PadY: vg.Millimeter * 4,
		PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 3, PadLeft: vg.Millimeter * 3, PadRight: vg.Millimeter * 4}
	for i, p := range plots {
		p.Draw(tiles.At(body, i%cols, i/cols))
	}
	return img, names, nil
}

// isServer says whether a run holds a server's per-round curves.
func isServer(r *tbRun) bool {
	return len(r.series[server.TagTrainLoss]) > 0 || len(r.series[server.TagTrainAccuracy]) > 0 || len(r.series[server.TagContributions]) > 0
}

// epochsPerRound is the epochs of a round, from the last step of the
// sites' curves and the last round of the server's; overlay says whether
// the server's curves can be drawn on the sites' (there is a server run
// and the numbers agree).
func epochsPerRound(runs []*tbRun) (int64, bool) {
	var rounds, steps float64
	servers := 0
	for _, r := range runs {
		if isServer(r) {
			servers++
			for _, tag := range []string{server.TagTrainLoss, server.TagTrainAccuracy} {
				if xys := r.points(tag); len(xys) > 0 {
					rounds = math.Max(rounds, xys[len(xys)-1].X)
				}
			}
			continue
		}
		if xys := r.points(pneumonia.TagTrainLoss); len(xys) > 0 {
			steps = math.Max(steps, xys[len(xys)-1].X)
		}
	}
	if servers != 1 || rounds < 1 || steps < rounds || math.Mod(steps, rounds) != 0 {
		return 0, servers == 0
	}
	return int64(steps / rounds), true
}

// curvePlot is tag's curve of every run that has it, and, with epochs,
// the server's serverTag at the last epoch of each round; nil when no run
// has tag.
func curvePlot(dir string, runs []*tbRun, tag, serverTag string, epochs int64, title, ylabel string, unit bool) *plot.Plot {
	p := plot.New()
	p.Title.Text = title + " (" + tag + ")"
	p.X.Label.Text = "step: epoch (sites: round × epochs + epoch)"
	p.Y.Label.Text = ylabel
	p.Add(plotter.NewGrid())
	var lines []any
	var mean plotter.XYs
	for _, r := range runs {
		if xys := r.points(tag); len(xys) > 0 {
			lines = append(lines, runLabel(dir, r.name), xys)
		}
		if serverTag != "" && epochs > 0 && isServer(r) {
			for _, xy := range r.points(serverTag) {
				mean = append(mean, plotter.XY{X: xy.X * float64(epochs), Y: xy.Y})
			}
		}
	}
	if len(lines) == 0 {
		return nil
	}
	if err := plotutil.AddLinePoints(p, lines...); err != nil {
		return nil
	}
	if len(mean) > 0 {
		l, s, err := plotter.NewLinePoints(mean)
		if err != nil {
			return nil
		}
		l.Width, l.Color = vg.Points(2.5), color.Black
		s.Shape, s.Color, s.Radius = draw.CircleGlyph{}, color.Black, vg.Points(3.5)
		p.Add(l, s)
		p.Legend.Add(fmt.Sprintf("server: the round's mean (every %d epochs)", epochs), l, s)
	}
	if unit {
		p.Y.Min, p.Y.Max = 0, 1
		p.Legend.Top = false
	} else {
		// Room above the curves for the legend, one line per entry.
		entries := len(lines)/2 + min(len(mean), 1)
		p.Y.Min, p.Y.Max = 0, p.Y.Max*(1.08+0.07*float64(entries))
		p.Legend.Top = true
	}
	p.Legend.XOffs = -vg.Millimeter * 2
	p.Legend.YOffs = vg.Millimeter * 2
	if p.Legend.Top {
		p.Legend.YOffs = -vg.Millimeter * 2
	}
	return p
}

// serverPlot is the server's per-round means, or nil.
func serverPlot(runs []*tbRun) *plot.Plot {
	p := plot.New()
	p.Title.Text = "Server: per round, weighted as the aggregation"
	p.X.Label.Text = "round"
	p.Y.Label.Text = "mean of the sites' last epoch"
	p.Add(plotter.NewGrid())
	var lines []any
	for _, r := range runs {
		for _, tag := range []string{server.TagTrainLoss, server.TagTrainAccuracy} {
			if xys := r.points(tag); len(xys) > 0 {
				label := tag
				if len(runs) > 1 && r.name != server.RunName {
					label = r.name + ": " + tag
				}
				lines = append(lines, label, xys)
			}
		}
	}
	if len(lines) == 0 {
		return nil
	}
	if err := plotutil.AddLinePoints(p, lines...); err != nil {
		return nil
	}
	p.Y.Min = 0
	p.X.Tick.Marker = integerTicks{}
	p.Legend.Top = true
	p.Legend.XOffs, p.Legend.YOffs = -vg.Millimeter*2, -vg.Millimeter*2
	return p
}

// integerTicks marks whole numbers only (rounds).
type integerTicks struct{}

func (integerTicks) Ticks(lo, hi float64) []plot.Tick {
	var ts []plot.Tick
	for _, t := range (plot.DefaultTicks{}).Ticks(lo, hi) {
		if t.Label != "" && t.Value != math.Trunc(t.Value) {
			continue
		}
		ts = append(ts, t)
	}
	return ts
}

// crossMatrix is the cross-site validation matrix: accuracy of each
// owner's model at each site.
type crossMatrix struct {
	owners, sites []string
	acc           map[[2]string]float64 // [owner, site]
}

func (m *crossMatrix) Dims() (c, r int) { return len(m.owners), len(m.sites) }
func (m *crossMatrix) Z(c, r int) float64 {
	if v, ok := m.acc[[2]string{m.owners[c], m.sites[r]}]; ok {
		return v
	}
	return math.NaN()
}
func (m *crossMatrix) X(c int) float64 { return float64(c) }
func (m *crossMatrix) Y(r int) float64 { return float64(r) } // m.sites is sorted last first: the first on top

// readMatrix finds the matrix: the server's cross_site/OWNER/SITE values,
// else the sites' own validate/OWNER/accuracy.
func readMatrix(runs []*tbRun) *crossMatrix {
	m := &crossMatrix{acc: map[[2]string]float64{}}
	for _, r := range runs {
		for tag := range r.series {
			rest, ok := strings.CutPrefix(tag, "cross_site/")
			i := strings.LastIndex(rest, "/")
			if !ok || i <= 0 || i == len(rest)-1 {
				continue
			}
			if v, ok := r.last(tag); ok {
				m.acc[[2]string{rest[:i], rest[i+1:]}] = v
			}
		}
	}
	if len(m.acc) == 0 {
		for _, r := range runs {
			for tag := range r.series {
				rest, ok := strings.CutPrefix(tag, "validate/")
				owner, ok2 := strings.CutSuffix(rest, "/accuracy")
				if !ok || !ok2 || owner == "" {
					continue
				}
				if v, ok := r.last(tag); ok {
					m.acc[[2]string{owner, r.name}] = v
				}
			}
		}
	}
	if len(m.acc) == 0 {
		return nil
	}
	owners, sites := map[string]bool{}, map[string]bool{}
	for k := range m.acc {
		owners[k[0]], sites[k[1]] = true, true
	}
	for o := range owners {
		m.owners = append(m.owners, o)
	}
	for s := range sites {
		m.sites = append(m.sites, s)
	}
	// The global model last, after the sites' own.
	sort.Slice(m.owners, func(i, j int) bool {
		a, b := strings.HasPrefix(m.owners[i], "SRV_"), strings.HasPrefix(m.owners[j], "SRV_")
		if a != b {
			return b
		}
		return m.owners[i] < m.owners[j]
	})
	sort.Sort(sort.Reverse(sort.StringSlice(m.sites)))
	return m
}

// ownerLabel shortens the server's model name.
func ownerLabel(owner string) string {
	if strings.HasPrefix(owner, "SRV_") {
		return "global model"
	}
	return owner
}

// matrixPlot is the cross-site matrix as a heat map with the values in
// the cells, or nil when there is none.
func matrixPlot(runs []*tbRun) (*plot.Plot, error) {
	m := readMatrix(runs)
	if m == nil {
		return nil, nil
	}
	lo, hi := 0.0, 1.0
	for _, v := range m.acc {
		lo, hi = math.Min(lo, v), math.Max(hi, v)
	}
	// Yellow (low) to dark blue (high): no cell is as white as the page.
	pal, err := brewer.GetPalette(brewer.TypeSequential, "YlGnBu", 9)
	if err != nil {
		return nil, err
	}
	colors := pal.Colors()
	hm := plotter.NewHeatMap(m, pal)
	hm.Min, hm.Max = lo, hi
	hm.NaN = color.Gray{Y: 0xdd}
	p := plot.New()
	p.Title.Text = "Cross-site validation accuracy (" + server.CrossSiteTag("OWNER", "SITE") + ")"
	p.X.Label.Text = "model of"
	p.Y.Label.Text = "validated at"
	p.Add(hm)
	var xt, yt plot.ConstantTicks
	for i, o := range m.owners {
		xt = append(xt, plot.Tick{Value: float64(i), Label: ownerLabel(o)})
	}
	for i, s := range m.sites {
		yt = append(yt, plot.Tick{Value: m.Y(i), Label: s})
	}
	p.X.Tick.Marker, p.Y.Tick.Marker = xt, yt
	var xys plotter.XYs
	var labels []string
	var ink []color.Color
	for c := range m.owners {
		for r := range m.sites {
			v := m.Z(c, r)
			xys = append(xys, plotter.XY{X: m.X(c), Y: m.Y(r)})
			if math.IsNaN(v) {
				labels, ink = append(labels, "none"), append(ink, color.Black)
				continue
			}
			labels = append(labels, fmt.Sprintf("%.3f", v))
			// The cell's colour as the heat map picks it; dark text on the
			// light end of the palette, white on the dark.
			cell := colors[int((v-lo)*float64(len(colors)-1)/(hi-lo)+0.5)]
			ink = append(ink, textOn(cell))
		}
	}
	l, err := plotter.NewLabels(plotter.XYLabels{XYs: xys, Labels: labels})
	if err != nil {
		return nil, err
	}
	for i := range l.TextStyle {
		l.TextStyle[i].XAlign, l.TextStyle[i].YAlign = text.XCenter, text.YCenter
		l.TextStyle[i].Font.Size = vg.Points(13)
		l.TextStyle[i].Color = ink[i]
	}
	p.Add(l)
	return p, nil
}

// textOn is black or white, whichever reads better on c.
func textOn(c color.Color) color.Color {
	r, g, b, _ := c.RGBA()
	if 0.2126*float64(r)+0.7152*float64(g)+0.0722*float64(b) > 0.5*0xffff {
		return color.Black
	}
	return color.White
}
