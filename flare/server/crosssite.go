package server

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/persistor"
	"github.com/flarego/flarego/persistor/pickle"
)

// workflowCrossSite is the __workflow__ cookie of cross-site tasks, as
// NVFlare names the workflow in the seed-style configs.
const workflowCrossSite = "cross_site_validate"

// ServerModelName is the owner name of the final global model in
// cross-site results when a model locator is configured: "SRV_" and the
// name PTFileModelPersistor gives the global model.
const ServerModelName = "SRV_FL_global_model.pt"

// crossTask is one cross-site task for one client: submit_model, or
// validate with one owner's model.
type crossTask struct {
	id, name, owner, client string
	task                    *flare.Task // shared by the clients of one broadcast
	due                     time.Time
}

// crossSite is CrossSiteModelEval's state in a run. Submitted models stay
// in memory (as encoded validate tasks) and are never written to disk.
type crossSite struct {
	args         *flare.CrossSiteArgs
	participants []string
	queued       map[string][]*crossTask // by client
	sent         map[string]*crossTask   // by task id + "/" + client
	results      map[string]map[string]map[string]any
	models       int
}

func (x *crossSite) pending() int {
	n := len(x.sent)
	for _, q := range x.queued {
		n += len(q)
	}
	return n
}

// broadcast queues one task for every participant; s.mu must be held.
func (x *crossSite) broadcast(owner string, task *flare.Task, id string, timeout float64) {
	due := time.Time{}
	if timeout > 0 {
		due = time.Now().Add(time.Duration(timeout * float64(time.Second)))
	}
	for _, p := range x.participants {
		x.queued[p] = append(x.queued[p], &crossTask{id: id, name: task.Name, owner: owner, client: p, task: task, due: due})
	}
}

// crossTask makes a cross-site task as CrossSiteModelEval sends it, and
// has the wire prepare it.
func (s *Server) crossTask(name, id, owner string, dxo *flare.DXO) (*flare.Task, error) {
	sh := flare.NewShareable()
	sh.SetHeader(flare.HeaderTaskName, name)
	sh.SetHeader(flare.HeaderTaskID, id)
	jar := &pickle.Dict{Items: []pickle.Item{{Key: flare.HeaderWorkflow, Value: workflowCrossSite}, {Key: flare.HeaderTaskID, Value: id}}}
	if owner != "" {
		sh.SetHeader(flare.HeaderModelOwner, owner)
		jar.Set(flare.HeaderModelOwner, owner)
	} else {
		sh.SetHeader(flare.HeaderSubmitModelName, "best_model")
	}
	sh.SetHeader(flare.HeaderCookieJar, jar)
	if dxo != nil {
		sh.SetHeader(flare.HeaderContentType, "DXO")
		sh.DXO = dxo
	}
	t := &flare.Task{Name: name, Data: sh}
	if err := s.Wire.Prepare(t); err != nil {
		return nil, err
	}
	return t, nil
}

// crossSiteEval runs CrossSiteModelEval after the last round: every
// participant submits its local model, every participant scores every
// submitted model (and the final global one with a model locator), and
// the metrics go to DIR/cross_val_results.json as
// {scoring site: {model owner: {metric: value}}}.
func (s *Server) crossSiteEval(ctx context.Context, run *runState, global *persistor.StateDict) error {
	args := run.cross.args
	start := time.Now()
	participants := args.ParticipatingClients
	for wait := time.Now(); len(participants) == 0; {
		if participants = s.liveClientNames(); len(participants) > 0 {
			break
		}
		if time.Since(wait) > time.Duration(args.WaitForClientsTimeout*float64(time.Second)) {
			s.logf("cross-site evaluation: no clients within wait_for_clients_timeout; skipped")
			return nil
		}
		if err := flare.Sleep(ctx, time.Second); err != nil {
			return err
		}
	}
	s.logf("cross-site evaluation with %s", strings.Join(participants, ", "))
	// Submitted models have the global model's shape.
	s.resultModel.Store(global)
	x := run.cross
	s.mu.Lock()
	x.participants = participants
	x.queued, x.sent = map[string][]*crossTask{}, map[string]*crossTask{}
	x.results = map[string]map[string]map[string]any{}
	for _, p := range participants {
		x.results[p] = map[string]map[string]any{}
	}
	s.mu.Unlock()
	if args.SubmitModelTaskName != "" {
		id := flare.NewUUID()
		task, err := s.crossTask(args.SubmitModelTaskName, id, "", nil)
		if err != nil {
			return err
		}
		s.mu.Lock()
		x.broadcast("", task, id, args.SubmitModelTimeout)
		s.notify()
		s.mu.Unlock()
	}
	if args.ModelLocatorID != "" {
		id := flare.NewUUID()
		task, err := s.crossTask(args.ValidationTaskName, id, ServerModelName, flare.WeightsDXO(global, nil))
		if err != nil {
			return err
		}
		s.mu.Lock()
		x.broadcast(ServerModelName, task, id, args.ValidationTimeout)
		x.models++
		s.notify()
		s.mu.Unlock()
	}
	for {
		s.mu.Lock()
		s.dropDead()
		s.expireCrossTasks(x)
		n, ch := x.pending(), s.changed
		s.mu.Unlock()
		if n == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		case <-time.After(250 * time.Millisecond):
		}
	}
	s.mu.Lock()
	results, models := x.results, x.models
	s.mu.Unlock()
	s.logf("cross-site evaluation done: %d model(s) scored by %d site(s) in %.1f s", models, len(participants), time.Since(start).Seconds())
	for _, line := range crossSiteTable(results) {
		s.logf("  %s", line)
	}
	s.crossSiteCurves(run, results)
	dir := s.crossValDir(run, args.CrossValDir)
	if dir == "" {
		return nil
	}
	path := filepath.Join(dir, "cross_val_results.json")
	b, err := json.MarshalIndent(results, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := persistor.WriteFileAtomic(path, 0o644, func(w io.Writer) error { _, err := w.Write(append(b, '\n')); return err }); err != nil {
		return fmt.Errorf("cross-site results: %w", err)
	}
	s.logf("cross-site results: %s", path)
	return nil
}

// crossValDir is where a run's cross-site results go: the run folder in
// a workspace, else the output folder.
func (s *Server) crossValDir(run *runState, rel string) string {
	switch {
	case s.console != nil && s.console.workspace != "":
		return filepath.Join(s.console.runDir(run.number), rel)
	case s.OutputDir != "":
		return filepath.Join(s.OutputDir, rel)
	}
	return ""
}

// expireCrossTasks gives up tasks past their timeout or of clients that
// are gone, recording empty results for them; s.mu must be held.
func (s *Server) expireCrossTasks(x *crossSite) {
	live := map[string]bool{}
	for _, c := range s.clients {
		live[c.name] = true
	}
	gone := func(t *crossTask) bool {
		return (!t.due.IsZero() && time.Now().After(t.due)) || !live[t.client]
	}
	for p, q := range x.queued {
		kept := q[:0]
		for _, t := range q {
			if gone(t) {
				s.crossTaskFailed(x, t, "not picked up (timeout or client gone)")
			} else {
				kept = append(kept, t)
			}
		}
		x.queued[p] = kept
	}
	for k, t := range x.sent {
		if gone(t) {
			delete(x.sent, k)
			s.crossTaskFailed(x, t, "no result (timeout or client gone)")
		}
	}
}

func (s *Server) crossTaskFailed(x *crossSite, t *crossTask, why string) {
	what := "submitting its model"
	if t.owner != "" {
		x.results[t.client][t.owner] = map[string]any{}
		what = "scoring the model of " + t.owner
	}
	s.logf("cross-site: %s %s: %s", t.client, what, why)
	if s.run != nil && s.run.cross == x {
		s.run.siteLost(t.client, fmt.Sprintf("cross-site task %s (%s): %s", t.name, what, why))
	}
}

// nextCrossTask hands a client its next cross-site task; s.mu must be held.
func (x *crossSite) next(client string) *crossTask {
	q := x.queued[client]
	if len(q) == 0 {
		return nil
	}
	t := q[0]
	x.queued[client] = q[1:]
	x.sent[t.id+"/"+client] = t
	return t
}

// crossSiteResult takes a submit_model or validate result.
func (s *Server) crossSiteResult(c *clientEntry, sh *flare.Shareable, taskID string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	run := s.run
	if run == nil || run.cross == nil || run.cross.sent == nil {
		return "late result ignored"
	}
	x := run.cross
	key := taskID + "/" + c.name
	t, ok := x.sent[key]
	if !ok {
		s.logf("client %s: late or stale cross-site result ignored", c.name)
		return "late result ignored"
	}
	delete(x.sent, key)
	defer s.notify()
	rc := sh.ReturnCode()
	if t.owner == "" { // submit_model
		if rc != flare.RCOK || sh.DXO == nil || sh.DXO.Kind != flare.KindWeights {
			s.crossTaskFailed(x, t, fmt.Sprintf("return code %s, %s%s", flare.LogSafe(rc), dxoKind(sh), taskErrorSuffix(sh)))
			return "result ignored"
		}
		id := flare.NewUUID()
		task, err := s.crossTask(x.args.ValidationTaskName, id, c.name, sh.DXO)
		if err != nil {
			s.crossTaskFailed(x, t, flare.LogSafeErr(err))
			return "result ignored"
		}
		x.broadcast(c.name, task, id, x.args.ValidationTimeout)
		x.models++
		s.logf("cross-site: received the local model of %s; sent to %d site(s) to score", c.name, len(x.participants))
		return "Received"
	}
	if owner, _ := sh.CookieJar().Get(flare.HeaderModelOwner); owner != t.owner {
		s.crossTaskFailed(x, t, fmt.Sprintf("result names model owner %s", flare.LogSafe(fmt.Sprint(owner))))
		return "result ignored"
	}
	if rc != flare.RCOK || sh.DXO == nil || sh.DXO.Kind != flare.KindMetrics {
		s.crossTaskFailed(x, t, fmt.Sprintf("return code %s, %s%s", flare.LogSafe(rc), dxoKind(sh), taskErrorSuffix(sh)))
		return "result ignored"
	}
	m := map[string]any{}
	for _, v := range sh.DXO.Values {
		if k, ok := v.Key.(string); ok {
			m[k] = v.Value
		}
	}
	for _, a := range sh.DXO.Data {
		if v, ok := sh.DXO.Metric(a.Name); ok {
			m[a.Name] = v
		}
	}
	if err := checkMetrics(m); err != nil {
		s.crossTaskFailed(x, t, flare.LogSafeErr(err))
		return "result ignored"
	}
	x.results[c.name][t.owner] = m
	s.logf("cross-site: %s scored the model of %s", c.name, t.owner)
	return "Received"
}

// Bounds on one site's metrics of one model in cross_val_results.json.
const (
	maxMetrics           = 64
	maxMetricStringBytes = 200
)

// checkMetrics refuses metrics that cannot go into cross_val_results.json:
// JSON has no NaN or infinity (one such value would lose every site's
// results), and a metric is a number, a boolean or a short string.
func checkMetrics(m map[string]any) error {
	if len(m) > maxMetrics {
		return fmt.Errorf("%d metrics (at most %d)", len(m), maxMetrics)
	}
	for k, v := range m {
		if len(k) > flare.MaxNameBytes {
			return fmt.Errorf("a metric name of %d bytes (at most %d)", len(k), flare.MaxNameBytes)
		}
		switch x := v.(type) {
		case float64:
			if math.IsNaN(x) || math.IsInf(x, 0) {
				return fmt.Errorf("metric %q is %v", k, x)
			}
		case int64, bool:
		case string:
			if len(x) > maxMetricStringBytes {
				return fmt.Errorf("metric %q is a string of %d bytes (at most %d)", k, len(x), maxMetricStringBytes)
			}
		default:
			return fmt.Errorf("metric %q is a %s, not a number", k, pickle.TypeName(v))
		}
	}
	return nil
}

func dxoKind(sh *flare.Shareable) string {
	if sh.DXO == nil {
		return "no DXO"
	}
	return flare.LogSafe(sh.DXO.Kind) + " DXO"
}

// crossSiteTable renders results as lines: one row per scoring site, one
// column per model owner, val_acc (or the first metric) in each cell.
func crossSiteTable(results map[string]map[string]map[string]any) []string {
	var sites []string
	owners := map[string]bool{}
	for site, byOwner := range results {
		sites = append(sites, site)
		for o := range byOwner {
			owners[o] = true
		}
	}
	sort.Strings(sites)
	var cols []string
	for o := range owners {
		cols = append(cols, o)
	}
	sort.Strings(cols)
	lines := []string{"scored by \\ model of: " + strings.Join(cols, ", ")}
	for _, site := range sites {
		var cells []string
		for _, o := range cols {
			cells = append(cells, metricCell(results[site][o]))
		}
		lines = append(lines, site+": "+strings.Join(cells, ", "))
	}
	return lines
}

func metricCell(m map[string]any) string {
	if len(m) == 0 {
		return "-"
	}
	if v, ok := m["val_acc"]; ok {
		return flare.LogSafe(fmt.Sprintf("val_acc %v", v))
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return flare.LogSafe(fmt.Sprintf("%s %v", keys[0], m[keys[0]]))
}

func (s *Server) liveClientNames() []string {
	var names []string
	for _, c := range s.allClients() {
		names = append(names, c.name)
	}
	return names
}
