// Package jobs is a server's job store and scheduler, as NVFlare 2.4+
// runs jobs: a job is submitted as a zip of its folder (meta.json and its
// apps), waits until enough sites are online, runs, and keeps its
// workspace for download. The store is a folder that survives a restart
// of the server: each job is a folder named by its id holding meta.json,
// job.zip (as submitted) and, once it ran, workspace.zip. A job the
// server was running when it stopped is reported FINISHED:ABNORMAL when
// the store is opened again, its workspace kept.
//
// The package knows no wire: a Runner runs a job (the server runtime over
// whatever wire), and the admin side of a wire calls a Manager.
package jobs

import (
	"archive/zip"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/persistor"
)

// Files of a job in the store.
const (
	metaFile      = "meta"
	jobFile       = "data"
	workspaceFile = "workspace"
)

// MaxJobBytes bounds a submitted job's zip (and the apps in it).
const MaxJobBytes = flare.MaxAppBytes

// ErrNoJob is the error for a job id the store does not hold.
var ErrNoJob = errors.New("no such job")

// store is the folder of jobs; its methods are not safe for concurrent
// use (the Manager serializes them).
type store struct {
	dir string
}

func (s *store) jobDir(id string) string { return filepath.Join(s.dir, id) }

// checkID refuses an id that is not one the store could have made.
func checkID(id string) error {
	if err := flare.CheckPathName("job id", id); err != nil {
		return err
	}
	if err := flare.CheckName("job id", id); err != nil {
		return err
	}
	return nil
}

func (s *store) readMeta(id string) (*Meta, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	data, err := persistor.ReadRegular(filepath.Join(s.jobDir(id), metaFile), maxMetaBytes, "job meta")
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("job %s: %w", id, ErrNoJob)
	}
	if err != nil {
		return nil, err
	}
	m := &Meta{}
	if err := json.Unmarshal(data, m); err != nil {
		return nil, fmt.Errorf("job %s: %s: %w", id, metaFile, err)
	}
	if m.JobID != id {
		return nil, fmt.Errorf("job %s: %s names job %q", id, metaFile, flare.LogCut(m.JobID))
	}
	return m, nil
}

func (s *store) writeMeta(m *Meta) error {
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return writeFile(filepath.Join(s.jobDir(m.JobID), metaFile), data)
}

func writeFile(name string, data []byte) error {
	return persistor.WriteFileAtomic(name, 0o600, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
}

// list is every job's meta, oldest submission first. A job folder whose
// meta cannot be read is skipped and reported in bad.
func (s *store) list() (metas []*Meta, bad []error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, []error{err}
	}
	for _, e := range entries {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		m, err := s.readMeta(e.Name())
		if err != nil {
			bad = append(bad, err)
			continue
		}
		metas = append(metas, m)
	}
	sort.SliceStable(metas, func(i, j int) bool { return metas[i].SubmitTime < metas[j].SubmitTime })
	return metas, bad
}

// checkJob reads a submitted job zip: one top folder holding meta.json
// and the apps its deploy map names, each with a config folder. Nothing
// is unpacked: the entries are checked as flare.UnzipApp checks them
// when the job is unpacked to run.
func checkJob(data []byte) (*Meta, error) {
	if len(data) > MaxJobBytes {
		return nil, fmt.Errorf("the job is %d bytes, more than %d", len(data), MaxJobBytes)
	}
	zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil && !errors.Is(err, zip.ErrInsecurePath) {
		return nil, fmt.Errorf("the job is not a zip: %w", err)
	}
	if len(zr.File) > flare.MaxAppFiles {
		return nil, fmt.Errorf("the job has %d entries, more than %d", len(zr.File), flare.MaxAppFiles)
	}
	top := ""
	var metaEntry *zip.File
	dirs := map[string]bool{}
	for _, f := range zr.File {
		name := strings.TrimSuffix(f.Name, "/")
		first, rest, _ := strings.Cut(name, "/")
		if err := flare.CheckPathName("job folder", first); err != nil {
			return nil, fmt.Errorf("the job's entry %q: %w", flare.LogCut(f.Name), err)
		}
		if top == "" {
			top = first
		} else if first != top {
			return nil, fmt.Errorf("the job holds two top folders, %q and %q (a job is one folder)", flare.LogCut(top), flare.LogCut(first))
		}
		if rest == "meta.json" {
			metaEntry = f
		}
		if d := path.Dir(rest); d != "." {
			dirs[d] = true
		}
		if f.FileInfo().IsDir() && rest != "" {
			dirs[rest] = true
		}
	}
	if metaEntry == nil {
		return nil, fmt.Errorf("the job folder %q has no meta.json", flare.LogCut(top))
	}
	if metaEntry.UncompressedSize64 > maxMetaBytes {
		return nil, fmt.Errorf("the job's meta.json declares %d bytes, more than %d", metaEntry.UncompressedSize64, maxMetaBytes)
	}
	rc, err := metaEntry.Open()
	if err != nil {
		return nil, fmt.Errorf("the job's meta.json: %w", err)
	}
	mdata, err := io.ReadAll(io.LimitReader(rc, maxMetaBytes+1))
	rc.Close()
	if err != nil {
		return nil, fmt.Errorf("the job's meta.json: %w", err)
	}
	m, err := parseMeta(mdata, top)
	if err != nil {
		return nil, fmt.Errorf("job %s: %w", flare.LogCut(top), err)
	}
	for app := range m.DeployMap {
		if !dirs[app+"/config"] {
			return nil, fmt.Errorf("job %s: deploy_map names app %s, but the job has no %s/config folder", top, app, app)
		}
		if dirs[app+"/custom"] {
			m.BYOC = true
		}
	}
	// The entries themselves (names, sizes, kinds) are checked now, not
	// only when the job runs.
	if err := flare.CheckZip(data); err != nil {
		return nil, fmt.Errorf("job %s: %w", top, err)
	}
	return m, nil
}

// add stores a new job.
func (s *store) add(m *Meta, data []byte) error {
	dir := s.jobDir(m.JobID)
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(s.dir, ".new-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if err := writeFile(filepath.Join(tmp, jobFile), data); err != nil {
		return err
	}
	mdata, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFile(filepath.Join(tmp, metaFile), mdata); err != nil {
		return err
	}
	return os.Rename(tmp, dir)
}

func (s *store) jobZip(id string) ([]byte, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	return persistor.ReadRegular(filepath.Join(s.jobDir(id), jobFile), MaxJobBytes, "job")
}

// saveWorkspace zips a job's run folder into the store.
func (s *store) saveWorkspace(id, runDir string) error {
	data, err := flare.ZipFolder(runDir, "")
	if err != nil {
		return err
	}
	if len(data) > maxWorkspaceBytes {
		return fmt.Errorf("its workspace zips to %d bytes, more than the %d a download takes; it stays in %s", len(data), maxWorkspaceBytes, runDir)
	}
	return writeFile(filepath.Join(s.jobDir(id), workspaceFile), data)
}

// maxWorkspaceBytes bounds the workspace a download reads.
const maxWorkspaceBytes = 4 << 30

func (s *store) workspaceZip(id string) ([]byte, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	data, err := persistor.ReadRegular(filepath.Join(s.jobDir(id), workspaceFile), maxWorkspaceBytes, "job workspace")
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return data, err
}

func (s *store) remove(id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	return os.RemoveAll(s.jobDir(id))
}

// DurationString is a duration as Python's str(timedelta) writes it, as
// NVFlare's job meta holds run durations ("0:00:10.961349").
func DurationString(d time.Duration) string {
	d = d.Round(time.Microsecond)
	h := int(d.Hours())
	m := int(d.Minutes()) % 60
	sec := d.Seconds() - float64(h*3600+m*60)
	return fmt.Sprintf("%d:%02d:%09.6f", h, m, sec)
}
