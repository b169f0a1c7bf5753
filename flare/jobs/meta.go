package jobs

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/flarego/flarego/flare"
)

// A job's status, NVFlare's RunStatus values.
const (
	Submitted          = "SUBMITTED"
	Dispatched         = "DISPATCHED"
	Running            = "RUNNING"
	Completed          = "FINISHED:COMPLETED"
	Aborted            = "FINISHED:ABORTED"
	ExecutionException = "FINISHED:EXECUTION_EXCEPTION"
	Abnormal           = "FINISHED:ABNORMAL"
	CantSchedule       = "FINISHED:CAN_NOT_SCHEDULE"
	FailedToRun        = "FINISHED:FAILED_TO_RUN"
)

// Finished says whether status is a final one.
func Finished(status string) bool { return strings.HasPrefix(status, "FINISHED:") }

// AllSites in a deploy map is every site online when the job starts.
const AllSites = "@ALL"

// ServerSite is the server's name in a deploy map.
const ServerSite = "server"

// Meta is a job's meta.json as NVFlare 2.4+ keeps it in its job store
// (the fields NVFlare's admin tools read), plus flarego's reason for a
// job that did not complete.
type Meta struct {
	JobID         string              `json:"job_id"`
	Name          string              `json:"name"`
	JobFolderName string              `json:"job_folder_name"`
	SubmitterName string              `json:"submitter_name"`
	SubmitterOrg  string              `json:"submitter_org"`
	SubmitterRole string              `json:"submitter_role"`
	Status        string              `json:"status"`
	DeployMap     map[string][]string `json:"deploy_map"`
	ResourceSpec  map[string]any      `json:"resource_spec"`
	MinClients    int                 `json:"min_clients,omitempty"`
	Mandatory     []string            `json:"mandatory_clients,omitempty"`
	Study         string              `json:"study"`
	SubmitTime    float64             `json:"submit_time"`
	SubmitTimeISO string              `json:"submit_time_iso"`
	StartTime     string              `json:"start_time,omitempty"`
	Duration      string              `json:"duration,omitempty"`
	ScheduleCount int                 `json:"schedule_count"`
	DeployDetail  []string            `json:"job_deploy_detail,omitempty"`
	Clients       []string            `json:"flarego_clients,omitempty"`
	// BYOC says the job brings its own code (an app with custom/), as
	// NVFlare marks it; sites authorize such a job's components by it.
	BYOC bool `json:"byoc,omitempty"`
	// Reason says why a job did not complete.
	Reason string `json:"flarego_reason,omitempty"`
}

// submittedMeta is what a submitter's meta.json may say; the rest is the
// store's to fill in.
type submittedMeta struct {
	Name         string          `json:"name"`
	DeployMap    json.RawMessage `json:"deploy_map"`
	ResourceSpec map[string]any  `json:"resource_spec"`
	MinClients   *int            `json:"min_clients"`
	Mandatory    []string        `json:"mandatory_clients"`
}

// maxMetaBytes bounds a submitted meta.json.
const maxMetaBytes = 1 << 20

// parseMeta reads a submitted job's meta.json: a deploy map of app names
// (each an app folder of the job) to site names or @ALL, at least one
// app for the server and one for the sites.
func parseMeta(data []byte, folder string) (*Meta, error) {
	if len(data) > maxMetaBytes {
		return nil, fmt.Errorf("meta.json is %d bytes, more than %d", len(data), maxMetaBytes)
	}
	var sm submittedMeta
	if err := json.Unmarshal(data, &sm); err != nil {
		return nil, fmt.Errorf("meta.json: %w", err)
	}
	m := &Meta{Name: sm.Name, JobFolderName: folder, ResourceSpec: sm.ResourceSpec, Mandatory: sm.Mandatory}
	if m.Name == "" {
		m.Name = folder
	}
	if err := flare.CheckName("job name", m.Name); err != nil {
		return nil, fmt.Errorf("meta.json: %w", err)
	}
	if m.ResourceSpec == nil {
		m.ResourceSpec = map[string]any{}
	}
	if sm.MinClients != nil {
		if *sm.MinClients < 0 || *sm.MinClients > 100000 {
			return nil, fmt.Errorf("meta.json: min_clients %d is out of range", *sm.MinClients)
		}
		m.MinClients = *sm.MinClients
	}
	for _, s := range m.Mandatory {
		if err := flare.CheckName("mandatory client", s); err != nil {
			return nil, fmt.Errorf("meta.json: %w", err)
		}
	}
	if len(sm.DeployMap) == 0 {
		return nil, fmt.Errorf("meta.json: no deploy_map")
	}
	if err := json.Unmarshal(sm.DeployMap, &m.DeployMap); err != nil {
		// NVFlare also takes {app: {"sites": [...]}}; flarego does not.
		return nil, fmt.Errorf("meta.json: deploy_map must map each app to a list of site names: %v", err)
	}
	server, sites := 0, 0
	for app, list := range m.DeployMap {
		if err := flare.CheckPathName("app name in deploy_map", app); err != nil {
			return nil, fmt.Errorf("meta.json: %w", err)
		}
		for _, s := range list {
			switch s {
			case ServerSite:
				server++
			case AllSites:
				server++
				sites++
			default:
				if err := flare.CheckName("site name in deploy_map", s); err != nil {
					return nil, fmt.Errorf("meta.json: %w", err)
				}
				sites++
			}
		}
	}
	if server != 1 {
		return nil, fmt.Errorf("meta.json: deploy_map must give the server exactly one app (it gives %d)", server)
	}
	if sites == 0 {
		return nil, fmt.Errorf("meta.json: deploy_map gives no app to any site")
	}
	return m, nil
}

// ServerApp is the app the deploy map gives the server.
func (m *Meta) ServerApp() string {
	for _, app := range m.appNames() {
		for _, s := range m.DeployMap[app] {
			if s == ServerSite || s == AllSites {
				return app
			}
		}
	}
	return ""
}

// SiteApp is the app the deploy map gives a site, or "".
func (m *Meta) SiteApp(site string) string {
	all := ""
	for _, app := range m.appNames() {
		for _, s := range m.DeployMap[app] {
			if s == site {
				return app
			}
			if s == AllSites && all == "" {
				all = app
			}
		}
	}
	return all
}

// appNames are the deploy map's apps in order, for a stable choice.
func (m *Meta) appNames() []string {
	names := make([]string, 0, len(m.DeployMap))
	for app := range m.DeployMap {
		names = append(names, app)
	}
	sort.Strings(names)
	return names
}

// named are the sites the deploy map names, and whether it has @ALL.
func (m *Meta) named() (sites []string, all bool) {
	seen := map[string]bool{}
	for _, app := range m.appNames() {
		for _, s := range m.DeployMap[app] {
			switch s {
			case ServerSite:
			case AllSites:
				all = true
			default:
				if !seen[s] {
					seen[s] = true
					sites = append(sites, s)
				}
			}
		}
	}
	sort.Strings(sites)
	return sites, all
}

// Candidates picks the job's sites among those online, as NVFlare's
// scheduler does: every online site for @ALL, else the named ones that
// are online. It says why the job cannot start yet, if it cannot: fewer
// than min_clients (default: 1 for @ALL, else all the named sites), or a
// mandatory site away.
func (m *Meta) Candidates(online []string) ([]string, error) {
	up := map[string]bool{}
	for _, s := range online {
		up[s] = true
	}
	named, all := m.named()
	var picked []string
	if all {
		picked = append(picked, online...)
	} else {
		for _, s := range named {
			if up[s] {
				picked = append(picked, s)
			}
		}
	}
	sort.Strings(picked)
	need := m.MinClients
	if need == 0 {
		need = 1
		if !all {
			need = len(named)
		}
	}
	for _, s := range m.Mandatory {
		if !up[s] {
			return nil, fmt.Errorf("mandatory site %s is not online", s)
		}
	}
	if len(picked) < need {
		return nil, fmt.Errorf("%d of the %d site(s) it needs are online", len(picked), need)
	}
	return picked, nil
}

func isoTime(t time.Time) string { return t.Format("2006-01-02T15:04:05.000000-07:00") }
