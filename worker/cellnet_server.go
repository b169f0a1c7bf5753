package main

import (
	"context"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/flarego/flarego/fcp"
	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/cellnet/cell"
	"github.com/flarego/flarego/flare/cellnet/console"
	"github.com/flarego/flarego/flare/cellnet/deploy"
	"github.com/flarego/flarego/flare/cellnet/fobs"
	"github.com/flarego/flarego/flare/cellnet/msgpk"
	"github.com/flarego/flarego/flare/cellnet/register"
	"github.com/flarego/flarego/flare/cellnet/serverwire"
	"github.com/flarego/flarego/flare/cellnet/stream"
	"github.com/flarego/flarego/flare/jobs"
	"github.com/flarego/flarego/flare/np"
	"github.com/flarego/flarego/flare/server"
	"github.com/flarego/flarego/persistor"
	"github.com/flarego/flarego/pneumonia"
)

// cellnetServer runs an NVFlare 2.4+ server from a 2.4+ server kit: it
// listens on the kit's port, registers the sites with the kit's
// certificate, and runs either one job given with --job (deployed to
// every site as it comes) or the jobs submitted by NVFlare's admin tools,
// kept in the job store (the kit's job_manager uri_root, as NVFlare's, or
// WORKSPACE/jobs-storage).
func (c *command) cellnetServer(kit *flare.StartupKit, sets map[string]string, jobDir string, k *persistor.Key, loc fcp.Locations, resume string) error {
	if sch := kit.Servers[0].Service.Scheme; sch != "" && sch != "grpc" {
		return fmt.Errorf("%s: scheme %q: flarego speaks NVFlare's gRPC driver only (provision with scheme: grpc)", kit.Path, flare.LogCut(sch))
	}
	wf, err := flare.ServerSets(sets)
	if err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	certPEM, key, root, err := kit.ServerIdentity()
	if err != nil {
		return fmt.Errorf("%s: %w", kit.Path, err)
	}
	cert, err := x509.ParseCertificate(mustDER(certPEM))
	if err != nil {
		return fmt.Errorf("%s: server certificate: %w", kit.Path, err)
	}
	tlsCfg, err := kit.CellNetServerTLS()
	if err != nil {
		return fmt.Errorf("%s: %w", kit.Path, err)
	}
	cs := &cellnetServer{c: c, kit: kit, wf: wf, key: k, loc: loc, cert: cert, certPEM: certPEM, signer: key, root: root,
		secure: sets["secure_train"] == "true", ws: filepath.Dir(kit.Dir),
		logf: func(format string, a ...any) { fmt.Fprintf(c.stderr, format+"\n", a...) }}
	reg := &register.Registrar{Name: cert.Subject.CommonName, CertPEM: certPEM, Key: key, Root: root}
	if hb := kit.Servers[0].HeartBeatTimeout; hb > 0 {
		reg.Timeout = time.Duration(hb * float64(time.Second))
	}
	if jobDir != "" {
		return cs.oneJob(reg, tlsCfg, jobDir, resume)
	}
	return cs.jobs(reg, tlsCfg)
}

// cellnetServer is what an NVFlare 2.4+ server runs with.
type cellnetServer struct {
	c       *command
	kit     *flare.StartupKit
	wf      []string
	key     *persistor.Key
	loc     fcp.Locations
	cert    *x509.Certificate
	certPEM []byte
	signer  *rsa.PrivateKey
	root    *x509.Certificate
	secure  bool
	ws      string
	logf    func(format string, a ...any)
}

// listen listens on the kit's port, on every interface (NVFlare's server
// binds the port, not the host of its target).
func (cs *cellnetServer) listen() (net.Listener, error) {
	_, port, err := net.SplitHostPort(cs.kit.Target())
	if err != nil {
		return nil, fmt.Errorf("%s: servers[0].service.target %q: %w", cs.kit.Path, cs.kit.Target(), err)
	}
	lis, err := net.Listen("tcp", ":"+port)
	if err != nil {
		return nil, fmt.Errorf("%s: listening on port %s: %w", cs.kit.Path, port, err)
	}
	return lis, nil
}

// runtime makes the server runtime of a job's server app: NVFlare's
// persistors keep their models under runDir, the secured persistor's
// "/output/..." goes under output.
func (cs *cellnetServer) runtime(appDir, runDir, output string) (*server.Server, error) {
	job, err := flare.LoadJob(appDir)
	if err != nil {
		return nil, err
	}
	if job.Server == nil {
		return nil, fmt.Errorf("%s: no config/config_fed_server.json", appDir)
	}
	if err := job.Server.SetWorkflowArgs(cs.wf); err != nil {
		return nil, fmt.Errorf("%w: %v", errUsage, err)
	}
	recipients, err := cs.loc.Recipients()
	if err != nil {
		return nil, err
	}
	reg := pneumonia.Registry(pneumonia.Config{JobDir: appDir, Key: cs.key, Recipients: recipients, Input: cs.loc.Input, Output: output, Logf: cs.logf})
	np.RegisterPersistor(reg, runDir)
	srv, err := server.New(job.Server, reg)
	if err != nil {
		return nil, err
	}
	srv.Logf, srv.Project, srv.OutputDir, srv.TBLogs = cs.logf, cs.kit.Project(), output, cs.loc.TensorBoardDir()
	return srv, nil
}

func (cs *cellnetServer) mode(tlsOn bool) string {
	if !tlsOn {
		return "clear"
	}
	return "TLS"
}

// oneJob runs the job in jobDir, deployed to every site as it comes.
func (cs *cellnetServer) oneJob(reg *register.Registrar, tlsCfg *tls.Config, jobDir, resume string) error {
	app, err := deploy.SignedZip(jobDir, cs.signer, cs.certPEM)
	if err != nil {
		return err
	}
	jobID := flare.NewUUID()
	srv, err := cs.runtime(jobDir, filepath.Join(cs.ws, jobID), cs.loc.Output)
	if err != nil {
		return err
	}
	srv.Resume = resume
	name := filepath.Base(filepath.Clean(jobDir))
	meta := jobs.Meta{JobID: jobID, Name: name, JobFolderName: name, DeployMap: map[string][]string{"app": {jobs.AllSites}},
		SubmitterName: cs.cert.Subject.CommonName, SubmitterRole: "project_admin", Study: "default"}
	w := &serverwire.Wire{JobID: jobID, App: app, Logf: cs.logf, Registrar: reg, Meta: metaMap(meta)}
	w.TLS = tlsCfg
	srv.Wire = w
	lis, err := cs.listen()
	if err != nil {
		return err
	}
	cs.logf("server: NVFlare 2.4+ server %s listening on %s (%s), job %s from %s", cs.cert.Subject.CommonName, lis.Addr(),
		cs.mode(w.TLS != nil), jobID, jobDir)
	ctx, stop := interruptible()
	defer stop()
	if err := srv.Serve(ctx, lis); err != nil {
		return err
	}
	if lost, sites := srv.LostSites(); len(lost) > 0 {
		return fmt.Errorf("the run lost %d of %d site(s): %s", len(lost), sites, strings.Join(lost, "; "))
	}
	return nil
}

// jobs runs the jobs NVFlare's admin tools submit, until the admin
// console or a signal shuts the server down.
func (cs *cellnetServer) jobs(reg *register.Registrar, tlsCfg *tls.Config) error {
	hub := &serverwire.Hub{TLS: tlsCfg, Registrar: reg, Logf: cs.logf}
	// The job store: where the kit's resources.json puts NVFlare's
	// (uri_root of job_manager), else WORKSPACE/jobs-storage.
	store, err := cs.kit.JobStore()
	if err != nil {
		return err
	}
	if store == "" {
		store = filepath.Join(cs.ws, "jobs-storage")
	}
	mgr, err := jobs.Open(jobs.Config{Store: store, RunRoot: cs.ws, Online: hub.Online, Logf: cs.logf,
		Runner: jobs.RunnerFunc(func(ctx context.Context, r *jobs.Run) error { return cs.runJob(ctx, hub, r) })})
	if err != nil {
		return err
	}
	hub.OnReady = func(string) { mgr.Wake() }
	ctx, stop := interruptible()
	defer stop()
	ctx, shutdown := context.WithCancel(ctx)
	defer shutdown()
	hub.Admin = cs.admin(hub, reg, mgr, shutdown)
	lis, err := cs.listen()
	if err != nil {
		return err
	}
	cs.logf("server: NVFlare 2.4+ server %s listening on %s (%s), job store %s", cs.cert.Subject.CommonName, lis.Addr(),
		cs.mode(hub.TLS != nil), store)
	managed := make(chan error, 1)
	go func() { managed <- mgr.Serve(ctx) }()
	err = hub.Serve(ctx, lis)
	shutdown()
	if merr := <-managed; err == nil {
		err = merr
	}
	return err
}

// runJob runs one job from the store: the server app is copied into the
// job's run folder (WORKSPACE/<job id>/app_server) and run there, its
// models and outputs kept in WORKSPACE/<job id> (models/, output/); each
// site gets its app from the deploy map, with the submitter's signatures
// when it was submitted signed, else signed with the server's key.
func (cs *cellnetServer) runJob(ctx context.Context, hub *serverwire.Hub, r *jobs.Run) error {
	serverApp := r.Meta.ServerApp()
	zip, err := flare.ZipApp(filepath.Join(r.JobDir, serverApp))
	if err != nil {
		return err
	}
	runDir := filepath.Join(r.Dir, "app_server")
	if err := flare.UnzipApp(zip, runDir); err != nil {
		return err
	}
	// Each job's "/output" is its own, in its workspace (downloaded with
	// it), not the server's FCP /output that jobs would overwrite.
	output := filepath.Join(r.Dir, "output")
	if err := os.MkdirAll(output, 0o700); err != nil {
		return err
	}
	srv, err := cs.runtime(runDir, r.Dir, output)
	if err != nil {
		return err
	}
	prefix := "job " + r.Meta.JobID + ": "
	srv.Logf = func(format string, a ...any) { cs.logf(prefix+format, a...) }
	apps := map[string][]byte{}
	appFor := func(site string) ([]byte, error) {
		name := r.Meta.SiteApp(site)
		if name == "" {
			return nil, fmt.Errorf("the deploy map gives site %s no app", site)
		}
		if b, ok := apps[name]; ok {
			return b, nil
		}
		dir := filepath.Join(r.JobDir, name)
		var b []byte
		if _, err := os.Stat(filepath.Join(dir, deploy.SigFile)); err == nil {
			b, err = flare.ZipApp(dir)
			if err != nil {
				return nil, err
			}
		} else if b, err = deploy.SignedZip(dir, cs.signer, cs.certPEM); err != nil {
			return nil, err
		}
		apps[name] = b
		return b, nil
	}
	// The apps are made before the job starts: appFor runs on the
	// deployment's goroutines afterwards, reading the map only.
	for _, s := range r.Sites {
		if _, err := appFor(s); err != nil {
			return err
		}
	}
	j := hub.Job(r.Meta.JobID, metaMap(r.Meta), appFor, r.Sites)
	j.Logf = srv.Logf
	j.Submitter = [3]string{r.Meta.SubmitterName, r.Meta.SubmitterOrg, r.Meta.SubmitterRole}
	srv.Wire = j
	go func() {
		select {
		case <-j.Deployed():
			srv.CloseMembership()
		case <-ctx.Done():
		}
	}()
	if err := srv.Serve(ctx, nil); err != nil {
		return err
	}
	if lost, sites := srv.LostSites(); len(lost) > 0 {
		cs.logf("%sthe run lost %d of %d site(s): %s", prefix, len(lost), sites, strings.Join(lost, "; "))
	}
	return nil
}

// metaMap is a job's meta as sites get it with train.deploy and
// train.start_job.
func metaMap(m jobs.Meta) msgpk.Map {
	deployMap := msgpk.Map{}
	apps := make([]string, 0, len(m.DeployMap))
	for app := range m.DeployMap {
		apps = append(apps, app)
	}
	sort.Strings(apps)
	for _, app := range apps {
		var sites []any
		for _, s := range m.DeployMap[app] {
			sites = append(sites, s)
		}
		deployMap = append(deployMap, msgpk.KV{Key: app, Value: sites})
	}
	spec := msgpk.Map{}
	out := msgpk.Map{{Key: "name", Value: m.Name}, {Key: "resource_spec", Value: spec}, {Key: "deploy_map", Value: deployMap},
		{Key: "min_clients", Value: int64(m.MinClients)}, {Key: "study", Value: m.Study},
		{Key: "submitter_name", Value: m.SubmitterName}, {Key: "submitter_org", Value: m.SubmitterOrg},
		{Key: "submitter_role", Value: m.SubmitterRole}, {Key: "job_folder_name", Value: m.JobFolderName},
		{Key: "job_id", Value: m.JobID}, {Key: "status", Value: m.Status}}
	if m.BYOC {
		out = append(out, msgpk.KV{Key: "byoc", Value: true})
	}
	return out
}

// admin serves NVFlare's admin console and flare_api sessions.
func (cs *cellnetServer) admin(hub *serverwire.Hub, reg *register.Registrar, mgr *jobs.Manager, shutdown func()) func(*cell.Cell, *stream.Streamer, string) {
	srv := &console.Server{Registrar: reg, Jobs: mgr, Online: hub.Online, Shutdown: shutdown, Logf: cs.logf, RequireSigned: cs.secure,
		Ask: func(ctx context.Context, site, topic string, headers msgpk.Map, body any) (*fobs.Message, error) {
			c, ok := hub.Parent(site)
			if !ok {
				return nil, fmt.Errorf("site %s is not connected", site)
			}
			return serverwire.Ask(ctx, c, site, topic, headers, body)
		}}
	return srv.Attach
}
