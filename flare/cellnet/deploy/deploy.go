// Package deploy does what an NVFlare 2.8.1 site does with the server's
// train.deploy admin request (nvflare.private.fed.client.training_cmds
// DeployProcessor and nvflare.private.fed.utils.app_deployer): it checks
// the job's app, a zip in the request, and unpacks it into the site's
// workspace. [Site.Deploy] handles a request end to end and says what to
// reply; [Verify] checks an app's signatures on its own.
//
// The request is an admin Message (package fobs) whose body is the app
// zip (the app folder's content, as the server zips it from the job the
// admin submitted) and whose headers carry job_id, app_name, job_meta (the
// job's meta.json as the server keeps it) and the submitter's name, org
// and role. In a project provisioned with a PKI, the admin console signs
// the job folder before it uploads it: every folder then holds
// .__nvfl_sig.json and the admin's certificate, .__nvfl_submitter.crt.
//
// The app lands where NVFlare's site puts it: WORKSPACE/JOB_ID/app_SITE,
// with WORKSPACE/JOB_ID/fl_app.txt holding the app name and
// WORKSPACE/JOB_ID/meta.json the job meta, the run folder of an earlier
// deploy of the job replaced. Unlike NVFlare's, it lands whole or not at
// all: it is unpacked ([flare.UnzipApp]) and checked in a new folder that
// is renamed into place at the end.
//
// Secure mode is a [Site] with a RootCA: the unpacked app's signatures are
// checked before it is put in place. NVFlare 2.8.1's site means to do the
// same, but looks for the signatures in the app folder before it unpacks
// the zip there, so in practice it checks nothing (2.4 to 2.7 did the
// same under --set secure_train=true, and skipped it with false); its
// server checks its own copy of the app and refuses an unsigned job when
// require_signed_jobs is set, the default with a root CA. Both skip the
// check for a job from a hub site (job meta from_hub_site); this package
// does not. A site that is to take unsigned apps in secure mode, as
// NVFlare 2.8.1's does, sets AllowUnsigned.
package deploy

import (
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/cellnet/fobs"
	"github.com/flarego/flarego/flare/cellnet/msgpk"
)

// Headers of a deploy request (nvflare.private.defs.RequestHeader).
const (
	HeaderJobID   = "job_id"
	HeaderAppName = "app_name"
	HeaderJobMeta = "job_meta"
)

// The reply's return code header and its values
// (nvflare.private.admin_defs).
const (
	HeaderReturnCode = "_rtnCode"
	ReturnOK         = "_ok"
	ReturnError      = "_error"
)

// errorPrefix starts the text of a deploy NVFlare's engine refuses
// (nvflare.private.defs.ERROR_MSG_PREFIX).
const errorPrefix = "NVFLARE_ERROR: "

// Site is a site that takes deploy requests.
type Site struct {
	// Name is the site's name (its client name): the app goes to
	// app_NAME, and the reply says it went "to NAME".
	Name string
	// Workspace is the site's workspace folder (made if missing).
	Workspace string
	// RootCA is the project's root certificate (the startup kit's
	// rootCA.pem); set, the site is in secure mode and deploys only
	// apps signed by a certificate from it. Nil is NVFlare's
	// non-secure mode: signatures are not checked.
	RootCA *x509.Certificate
	// AllowUnsigned lets a site in secure mode take an app that carries
	// no signatures at all (a signed app is still checked), as NVFlare
	// 2.8.1's site does.
	AllowUnsigned bool
}

// Result is how a deploy request went.
type Result struct {
	// OK says the app is in place.
	OK bool
	// Body is the reply's text, in NVFlare's words: "deployed APP to
	// SITE", "missing job meta", "app APP does not pass signature
	// verification", or NVFLARE_ERROR: and why.
	Body string
	// AppDir is the unpacked app's folder, when OK.
	AppDir string
	// Signer is the certificate that signed the app, when it was
	// checked and signed.
	Signer *x509.Certificate
	// Err is why the deploy failed, in full, for the site's log (Body
	// is what the server is told).
	Err error
}

// Reply is the admin Message a site answers the request with: topic
// "reply", the return code header, the body text.
func (r *Result) Reply() *fobs.Message {
	code := ReturnError
	if r.OK {
		code = ReturnOK
	}
	return &fobs.Message{ID: flare.NewUUID(), Topic: "reply", Body: r.Body, Headers: msgpk.Map{{Key: HeaderReturnCode, Value: code}}}
}

// Deploy handles the train.deploy request m: it checks the job id and app
// name (each a plain folder name, as NVFlare's check_job_id wants; the job
// id may name nothing in the workspace but an earlier run folder), unpacks
// the app, checks its signatures in secure mode, writes fl_app.txt and
// meta.json, and puts the run folder in place. Nothing is left behind
// when it fails.
func (s *Site) Deploy(m *fobs.Message) Result {
	failed := func(err error) Result { return Result{Body: errorPrefix + err.Error(), Err: err} }
	if m == nil || m.Topic != flare.TopicDeploy {
		// NVFlare's answer to a topic it has no processor for.
		return Result{Body: "invalid_request", Err: errors.New("not a train.deploy request")}
	}
	if err := flare.CheckName("site name", s.Name); err != nil {
		return failed(err)
	}
	if err := flare.CheckPathName("site name", s.Name); err != nil {
		return failed(err)
	}
	meta, _ := headerValue(m, HeaderJobMeta).(msgpk.Map)
	if len(meta) == 0 {
		return Result{Body: "missing job meta", Err: errors.New("the deploy request has no job_meta")}
	}
	jobID, err := jobName("job_id", headerValue(m, HeaderJobID))
	if err != nil {
		return failed(err)
	}
	appName, err := jobName("app_name", headerValue(m, HeaderAppName))
	if err != nil {
		return failed(err)
	}
	data, ok := m.Body.([]byte)
	if !ok {
		return failed(fmt.Errorf("the app of job %s is a %T, not zip bytes", jobID, m.Body))
	}
	metaJSON, err := pythonJSON(meta)
	if err != nil {
		return failed(fmt.Errorf("job meta: %w", err))
	}

	// The site's own failures: the server is told that, not the paths.
	local := func(err error) Result {
		return Result{Body: fmt.Sprintf("%sthe site could not write app %s into its workspace", errorPrefix, appName), Err: err}
	}
	run := filepath.Join(s.Workspace, jobID)
	if err := isRunDir(run); err != nil {
		return failed(fmt.Errorf("job_id %s: %w", jobID, err))
	}
	if err := os.MkdirAll(s.Workspace, 0o755); err != nil {
		return local(err)
	}
	tmp, err := os.MkdirTemp(s.Workspace, ".deploy-")
	if err != nil {
		return local(err)
	}
	defer os.RemoveAll(tmp) // renamed away when all went well
	app := "app_" + s.Name
	if err := flare.UnzipApp(data, filepath.Join(tmp, app)); err != nil {
		return failed(err)
	}
	var signer *x509.Certificate
	if s.RootCA != nil {
		signer, err = Verify(filepath.Join(tmp, app), s.RootCA)
		if err != nil && !(s.AllowUnsigned && errors.Is(err, ErrUnsigned)) {
			return Result{Body: fmt.Sprintf("app %s does not pass signature verification", appName), Err: fmt.Errorf("app %s of job %s: %w", appName, jobID, err)}
		}
	}
	if err := os.WriteFile(filepath.Join(tmp, runAppFile), []byte(appName), 0o644); err != nil {
		return local(err)
	}
	if err := os.WriteFile(filepath.Join(tmp, "meta.json"), metaJSON, 0o644); err != nil {
		return local(err)
	}
	if err := replaceDir(tmp, run); err != nil {
		return local(err)
	}
	return Result{OK: true, Body: fmt.Sprintf("deployed %s to %s", appName, s.Name), AppDir: filepath.Join(run, app), Signer: signer}
}

// headerValue is the value of a request header; nil if absent.
func headerValue(m *fobs.Message, key string) any {
	v, _ := m.Headers.Get(key)
	return v
}

// jobName checks a job id or app name, a folder name at the site, as
// NVFlare's check_job_id and check_job_app_name do
// (^[A-Za-z0-9][A-Za-z0-9._-]*$), within flare.MaxNameBytes.
func jobName(what string, v any) (string, error) {
	name, ok := v.(string)
	if !ok {
		return "", fmt.Errorf("%s is a %T, not a string", what, v)
	}
	if err := flare.CheckName(what, name); err != nil {
		return "", err
	}
	if err := flare.CheckPathName(what, name); err != nil {
		return "", err
	}
	if c := name[0]; !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9') {
		return "", fmt.Errorf("%s %s does not start with a letter or digit", what, strconv.Quote(name))
	}
	for i := 0; i < len(name); i++ {
		if name[i] == '@' {
			return "", fmt.Errorf("%s %s holds '@' (letters, digits and ._- only)", what, strconv.Quote(name))
		}
	}
	return name, nil
}

// runAppFile, in a run folder, names the app deployed there.
const runAppFile = "fl_app.txt"

// isRunDir refuses a path that is there and is not the run folder of an
// earlier deploy (a folder holding runAppFile): a job named "startup" or
// "local" must not replace the site's startup kit or its configuration,
// as NVFlare's site, which removes the run folder first, would.
func isRunDir(run string) error {
	fi, err := os.Lstat(run)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.IsDir() {
		if fi, err := os.Lstat(filepath.Join(run, runAppFile)); err == nil && fi.Mode().IsRegular() {
			return nil
		}
	}
	return errors.New("names something in the workspace that is not a run folder")
}

// replaceDir renames the folder src to dst, in place of what dst holds:
// an earlier dst is moved aside first and removed once src is in.
func replaceDir(src, dst string) error {
	if _, err := os.Lstat(dst); errors.Is(err, os.ErrNotExist) {
		return os.Rename(src, dst)
	} else if err != nil {
		return err
	}
	aside, err := os.MkdirTemp(filepath.Dir(dst), ".deploy-old-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(aside)
	old := filepath.Join(aside, "run")
	if err := os.Rename(dst, old); err != nil {
		return err
	}
	if err := os.Rename(src, dst); err != nil {
		os.Rename(old, dst)
		return err
	}
	return nil
}
