package console

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/cellnet/cell"
	"github.com/flarego/flarego/flare/cellnet/deploy"
	"github.com/flarego/flarego/flare/cellnet/fobs"
	"github.com/flarego/flarego/flare/cellnet/msgpk"
	"github.com/flarego/flarego/flare/cellnet/register"
	"github.com/flarego/flarego/flare/cellnet/stream"
	"github.com/flarego/flarego/flare/jobs"
)

// CellNet channels and topics of the admin protocol.
const (
	ChannelHCI       = "hci_channel"
	TopicCommand     = "command"
	ChannelAux       = "aux_communication"
	TopicObjRequest  = "ObjectStreamer.Request"
	TopicObjAbort    = "ObjectStreamer.Abort"
	ChannelDownload  = "download_service__"
	TopicDownload    = "download_service__download"
	uploadChannel    = "hci.upload"
	uploadTopic      = "folder"
	defaultSiteWait  = 4 * time.Second
	sessionIdle      = 30 * time.Minute
	maxSessions      = 256
	maxUploadsAtOnce = 4
)

// A Server answers NVFlare 2.4+ admin sessions for a job store and the
// sites of a hub.
type Server struct {
	// Registrar registered the admin sessions and the sites; it checks
	// logins against the project's root CA.
	Registrar *register.Registrar
	// Jobs is the job store.
	Jobs *jobs.Manager
	// Ask sends an admin request to a site (serverwire.Ask on its parent
	// cell); an error if the site is not connected.
	Ask func(ctx context.Context, site, topic string, headers msgpk.Map, body any) (*fobs.Message, error)
	// Online lists the sites ready for jobs.
	Online func() []string
	// Stats, when set, is the server part of show_stats for a running job.
	Stats func(jobID string) map[string]any
	// RequireSigned refuses a job not signed by its submitter (secure
	// mode: NVFlare's admin client signs every folder of a job with the
	// admin's key); checked when it is submitted, not only when the sites
	// are deployed it.
	RequireSigned bool
	// Shutdown stops the server (after shutdown server|all is answered).
	Shutdown func()
	Logf     func(format string, args ...any)

	started  time.Time
	mu       sync.Mutex
	sessions map[string]*session // token → session
	once     sync.Once
	auth     *cell.Auth // the server's headers to admin sessions (signed once)
	authErr  error
}

// A session is a logged-in admin.
type session struct {
	user, org, role, study string
	origin                 string
	last                   time.Time
}

func (s *Server) logf(format string, args ...any) {
	if s.Logf != nil {
		s.Logf(format, args...)
	}
}

func (s *Server) init() {
	s.once.Do(func() {
		s.started = time.Now()
		s.sessions = map[string]*session{}
		s.auth, s.authErr = s.Registrar.ServerAuth()
	})
}

// Attach sets up an admin session on its cell (from origin, the session's
// _admin_<uuid>) and a streamer on it: the
// server's authentication headers on every message to it (NVFlare's admin
// cell takes no other) and the handlers of its commands, uploads and
// downloads. It returns at once; the session registers with the
// Registrar as an admin after, then logs in.
func (s *Server) Attach(c *cell.Cell, st *stream.Streamer, origin string) {
	s.init()
	if s.auth == nil {
		s.logf("admin session: %v", s.authErr)
		c.Close()
		return
	}
	c.SetAuth(s.auth)
	ss := &sessionConn{s: s, c: c, st: st, uploads: map[string]*upload{}, files: map[string][]byte{}}
	st.Handle(ChannelHCI, TopicCommand, ss.command)
	st.Handle(ChannelAux, TopicObjRequest, ss.objectRequest)
	st.Handle(ChannelAux, TopicObjAbort, ss.objectAbort)
	st.Handle(ChannelDownload, TopicDownload, ss.download)
	go func() {
		// The session's registration and logins end with its connection.
		<-c.Done()
		s.Registrar.RemoveOrigin(origin)
		s.mu.Lock()
		for t, ses := range s.sessions {
			if ses.origin == origin {
				delete(s.sessions, t)
			}
		}
		s.mu.Unlock()
	}()
}

// sessionConn is one admin cell: its uploads and downloads.
type sessionConn struct {
	s  *Server
	c  *cell.Cell
	st *stream.Streamer

	mu      sync.Mutex
	uploads map[string]*upload // ObjectStreamer tx id → upload
	files   map[string][]byte  // download ref → file
}

func textMessage(text string) *cell.Message {
	b, err := fobs.Encode(text)
	if err != nil {
		return &cell.Message{Headers: msgpk.Map{{Key: cell.HReturnCode, Value: cell.RCProcessException}, {Key: cell.HError, Value: err.Error()}}}
	}
	return &cell.Message{Payload: b}
}

// command answers a hci_channel command.
func (ss *sessionConn) command(m *cell.Message) *cell.Message {
	v, err := fobs.DecodeBytes(m.Payload, fobs.Options{})
	if err != nil {
		return textMessage(fail(statusSyntax, "", "bad request: %v", err).encode())
	}
	text, ok := v.(string)
	if !ok {
		return textMessage(fail(statusSyntax, "", "bad request: a %T, not a document", v).encode())
	}
	return textMessage(ss.run(m, text, nil).encode())
}

// run runs a command document; upload is the job zip of submit_job.
func (ss *sessionConn) run(m *cell.Message, text string, upload []byte) *reply {
	cmd, token, meta, err := parseRequest(text)
	if err != nil {
		return fail(statusSyntax, "", "%v", err)
	}
	args, err := splitArgs(cmd)
	if err != nil || len(args) == 0 {
		return fail(statusSyntax, "", "syntax error: %q", flare.LogCut(cmd))
	}
	name := args[0]
	if scope, bare, ok := strings.Cut(name, "."); ok && commandScope[bare] == scope {
		name = bare
	}
	switch name {
	case "_cert_login":
		return ss.login(m, args)
	case "_check_session":
		if token == "" {
			return fail("invalid_session", "", "no session token")
		}
		if _, ok := ss.s.session(token); !ok {
			return inactive()
		}
		return newReply().str("OK")
	}
	if token == "" {
		return fail(statusNotAuth, "", "not authenticated - no token")
	}
	sess, ok := ss.s.session(token)
	if !ok || sess.origin != m.String(cell.HOrigin) {
		return inactive()
	}
	if name == "_logout" {
		ss.s.mu.Lock()
		delete(ss.s.sessions, token)
		ss.s.mu.Unlock()
		return newReply().str("OK")
	}
	h, ok := commands[name]
	if !ok {
		return fail(statusError, "", "Unknown command %q", flare.LogCut(args[0]))
	}
	wait := defaultSiteWait
	if t, ok := meta["cmd_timeout"].(float64); ok && t > 0 && t < 600 {
		wait = time.Duration(t * float64(time.Second))
	}
	return h(&call{ss: ss, sess: sess, args: args, upload: upload, wait: wait})
}

func inactive() *reply {
	r := newReply().add("error", "session_inactive")
	r.str("user not authenticated or session timed out after %d seconds of inactivity - logged out", int(sessionIdle.Seconds()))
	r.meta("status", statusNotAuth).meta("info", "session_inactive")
	return r
}

// session is a live session's copy, marked active.
func (s *Server) session(token string) (*session, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ses, ok := s.sessions[token]
	if !ok {
		return nil, false
	}
	if time.Since(ses.last) > sessionIdle {
		delete(s.sessions, token)
		return nil, false
	}
	ses.last = time.Now()
	cp := *ses
	return &cp, true
}

// login is _cert_login USER: the certificate and signature in the
// request's headers.
func (ss *sessionConn) login(m *cell.Message, args []string) *reply {
	reject := func(format string, a ...any) *reply {
		ss.s.logf("admin login refused: "+format, a...)
		return newReply().str("REJECT: "+format, a...)
	}
	if len(args) != 2 {
		return reject("usage: _cert_login user")
	}
	user := args[1]
	if err := flare.CheckName("user name", user); err != nil {
		return reject("%v", err)
	}
	certPEM, _ := m.Header("cert").([]byte)
	sig, _ := m.Header("signature").([]byte)
	if m.String("user_name") != user {
		return reject("the request's user_name is not %s", user)
	}
	study := m.String("study")
	if study == "" {
		study = "default"
	}
	if study != "default" {
		return newReply().str("REJECT: AUTH_UNKNOWN_STUDY: study %s is not known (this server has the default study only)", flare.LogSafe(study))
	}
	// The session's cell registered as this user.
	site, err := ss.s.Registrar.Check(m)
	if err != nil || site.Type != "admin" || site.Name != user {
		return reject("the session did not register as %s", user)
	}
	cert, err := ss.s.Registrar.VerifyLogin(user, certPEM, sig)
	if err != nil {
		return reject("%s: %v", user, err)
	}
	role := register.CertRole(cert)
	if !register.AdminRole(role) {
		return reject("%s: the certificate holds no admin role (project_admin, org_admin, lead or member)", user)
	}
	org := ""
	if len(cert.Subject.Organization) > 0 {
		org = cert.Subject.Organization[0]
	}
	var b [16]byte
	rand.Read(b[:])
	token := hex.EncodeToString(b[:])
	ss.s.mu.Lock()
	for t, old := range ss.s.sessions {
		if time.Since(old.last) > sessionIdle {
			delete(ss.s.sessions, t)
		}
	}
	if len(ss.s.sessions) >= maxSessions {
		ss.s.mu.Unlock()
		return reject("%d sessions open already", maxSessions)
	}
	ss.s.sessions[token] = &session{user: user, org: org, role: role, study: study, origin: m.String(cell.HOrigin), last: time.Now()}
	ss.s.mu.Unlock()
	ss.s.logf("admin %s (%s, %s) logged in", user, flare.LogSafe(role), flare.LogSafe(org))
	return newReply().str("OK").add("token", token)
}

// A call is one command of a logged-in session.
type call struct {
	ss     *sessionConn
	sess   *session
	args   []string
	upload []byte
	wait   time.Duration
}

// Rights, as NVFlare's default authorization policy names them.
const (
	rightView     = "view"
	rightSubmit   = "submit_job"
	rightManage   = "manage_job"
	rightDownload = "download_job"
	rightOperate  = "operate"
	rightClone    = "clone_job"
)

// allowed applies NVFlare's provisioned default policy: project_admin
// may do anything; a lead submits and clones jobs and manages and
// downloads its own; an org_admin manages and downloads its org's jobs
// and submits none; a member views. Server operations (shutdown,
// remove_client, sys_info) are project_admin's.
func (c *call) allowed(right string, job *jobs.Meta) bool {
	switch c.sess.role {
	case "project_admin":
		return true
	case "org_admin":
		switch right {
		case rightView:
			return true
		case rightManage, rightDownload:
			return job != nil && job.SubmitterOrg == c.sess.org
		}
		return false
	case "lead":
		switch right {
		case rightView, rightSubmit:
			return true
		case rightManage, rightDownload, rightClone:
			return job != nil && job.SubmitterName == c.sess.user
		}
		return false
	case "member":
		return right == rightView
	}
	return false
}

func notAuthorized() *reply {
	return fail(statusNotAuthorized, "not authorized", "This action is not authorized")
}

// commandScope is each command's scope, as the _commands table gives it.
var commandScope = map[string]string{}

type command struct {
	scope, name, desc, usage, confirm, clientCmd string
	visible                                      bool
	run                                          func(*call) *reply
}

var commands = map[string]func(*call) *reply{}
var commandList []command

func init() {
	commandList = []command{
		{"info", "reset_errors", "reset error stats for an actively running job", "reset_errors job_id server|client [clients]", "none", "", true, (*call).resetErrors},
		{"info", "show_errors", "show latest errors in an actively running job", "show_errors job_id server|client [clients]", "none", "", true, (*call).showErrors},
		{"info", "show_stats", "show current system stats for an actively running job", "show_stats job_id server|client [clients]", "none", "", true, (*call).showStats},
		{"job_mgmt", "abort_job", "abort a job if it is running or dispatched", "abort_job job_id", "yesno", "", true, (*call).abortJob},
		{"job_mgmt", "clone_job", "clone a job with a new job_id", "clone_job job_id", "none", "", true, (*call).cloneJob},
		{"job_mgmt", "delete_job", "delete a job and persisted workspace", "delete_job job_id", "auth", "", true, (*call).deleteJob},
		{"job_mgmt", "download_job", "download a specified job", "download_job job_id [destination]", "none", "file_transfer.pull_folder", true, (*call).downloadJob},
		{"job_mgmt", "get_job_meta", "get meta info of specified job", "get_job_meta job_id", "none", "", true, (*call).getJobMeta},
		{"job_mgmt", "list_jobs", "list submitted jobs", "list_jobs [-n name_prefix] [-d] [-u] [-r] [-m num_of_jobs] [job_id_prefix]", "none", "", true, (*call).listJobs},
		{"job_mgmt", "submit_job", "submit a job", "submit_job job_folder", "none", "file_transfer.push_folder", true, (*call).submitJob},
		{"sys", "sys_info", "get the system info", "sys_info server|client <client-name> ...", "none", "", true, (*call).sysInfo},
		{"training", "admin_check_status", "check status for project admin", "admin_check_status server|client", "none", "", false, (*call).checkStatus},
		{"training", "check_status", "check status of the FL server/client", "check_status server|client", "none", "", true, (*call).checkStatus},
		{"training", "remove_client", "release a client's active token so the client may register again", "remove_client <client-name>", "auth", "", false, (*call).removeClient},
		{"training", "shutdown", "shutdown the FL server/client", "shutdown server|client|all", "auth", "", true, (*call).shutdown},
	}
	for _, c := range commandList {
		commands[c.name] = c.run
		commandScope[c.name] = c.scope
	}
	commands["_commands"] = (*call).listCommands
}

func (c *call) listCommands() *reply {
	rows := [][]any{{"SCOPE", "COMMAND", "DESCRIPTION", "USAGE", "CONFIRM", "CLIENTCMD", "VISIBLE"}}
	list := append([]command(nil), commandList...)
	sort.Slice(list, func(i, j int) bool {
		if list[i].scope != list[j].scope {
			return list[i].scope < list[j].scope
		}
		return list[i].name < list[j].name
	})
	for _, cmd := range list {
		var cc any
		if cmd.clientCmd != "" {
			cc = cmd.clientCmd
		}
		vis := "False"
		if cmd.visible {
			vis = "True"
		}
		rows = append(rows, []any{cmd.scope, cmd.name, cmd.desc, cmd.usage, cmd.confirm, cc, vis})
	}
	return newReply().table(rows)
}

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// job checks args[1] as a job id and finds the job.
func (c *call) job() (*jobs.Meta, *reply) {
	if len(c.args) < 2 {
		return nil, fail(statusSyntax, "", "syntax error: missing job_id")
	}
	id := strings.ToLower(c.args[1])
	if !uuidRE.MatchString(id) {
		return nil, fail(statusInvalidJobID, flare.LogCut(c.args[1]), "invalid job_id %s", flare.LogSafe(c.args[1]))
	}
	j, err := c.ss.s.Jobs.Get(id)
	if err != nil {
		return nil, fail(statusInvalidJobID, id, "no such job: %s", id)
	}
	return &j, nil
}

// metaDict is a job's meta as NVFlare's tools read it.
func metaDict(j *jobs.Meta) map[string]any {
	b, _ := json.Marshal(j)
	var d map[string]any
	json.Unmarshal(b, &d)
	if j.StartTime == "" {
		d["start_time"] = ""
	}
	if j.Duration == "" {
		d["duration"] = "N/A"
	}
	d["data_storage_format"] = 2
	d["study"] = "default"
	return d
}

func (c *call) getJobMeta() *reply {
	j, bad := c.job()
	if bad != nil {
		return bad
	}
	if !c.allowed(rightView, j) {
		return notAuthorized()
	}
	d := metaDict(j)
	r := newReply().add("dict", d)
	return r.meta("status", statusOK).meta("info", "").meta("job_meta", d)
}

func (c *call) listJobs() *reply {
	if !c.allowed(rightView, nil) {
		return notAuthorized()
	}
	var detailed, mine, reverse bool
	var namePrefix, idPrefix string
	max := 0
	for i := 1; i < len(c.args); i++ {
		a := c.args[i]
		switch a {
		case "-d":
			detailed = true
		case "-u":
			mine = true
		case "-r":
			reverse = true
		case "-n", "-m", "--submit-token":
			if i+1 >= len(c.args) {
				return fail(statusSyntax, "", "syntax error: %s needs a value", a)
			}
			i++
			switch a {
			case "-n":
				namePrefix = strings.ToLower(c.args[i])
			case "-m":
				n, err := strconv.Atoi(c.args[i])
				if err != nil || n < 0 {
					return fail(statusSyntax, "", "syntax error: -m %s", flare.LogSafe(c.args[i]))
				}
				max = n
			}
		default:
			if strings.HasPrefix(a, "-") || idPrefix != "" {
				return fail(statusSyntax, "", "syntax error: %s", flare.LogSafe(a))
			}
			idPrefix = strings.ToLower(a)
		}
	}
	all := c.ss.s.Jobs.List()
	var sel []jobs.Meta
	for _, j := range all {
		if idPrefix != "" && !strings.HasPrefix(strings.ToLower(j.JobID), idPrefix) {
			continue
		}
		if namePrefix != "" && !strings.HasPrefix(strings.ToLower(j.Name), namePrefix) {
			continue
		}
		if mine && j.SubmitterName != c.sess.user {
			continue
		}
		sel = append(sel, j)
	}
	if max > 0 && len(sel) > max {
		sel = sel[len(sel)-max:]
	}
	if reverse {
		for i, k := 0, len(sel)-1; i < k; i, k = i+1, k-1 {
			sel[i], sel[k] = sel[k], sel[i]
		}
	}
	r := newReply()
	if len(all) == 0 {
		return r.str("No jobs found.").success().meta("jobs", []any{})
	}
	if len(sel) == 0 {
		return r.str("No jobs matching the specified criteria.").meta("status", statusOK).meta("info", "").meta("jobs", []any{})
	}
	metas := []any{}
	if detailed {
		for i := range sel {
			d := metaDict(&sel[i])
			b, _ := json.MarshalIndent(d, "", "    ")
			r.str("%s", b)
			metas = append(metas, d)
		}
		r.str("")
		return r.success().meta("jobs", metas)
	}
	rows := [][]any{{"JOB ID", "NAME", "STATUS", "SUBMIT TIME", "RUN DURATION"}}
	for _, j := range sel {
		d := j.Duration
		if d == "" {
			d = "N/A"
			if t, err := time.ParseInLocation("2006-01-02 15:04:05.000000", j.StartTime, time.Local); err == nil && j.Status == jobs.Running {
				d = jobs.DurationString(time.Since(t))
			}
		}
		rows = append(rows, []any{j.JobID, j.Name, j.Status, j.SubmitTimeISO, d})
		metas = append(metas, map[string]any{"job_id": j.JobID, "job_name": j.Name, "status": j.Status,
			"submit_time": j.SubmitTimeISO, "duration": d, "study": "default"})
	}
	return r.table(rows).success().meta("jobs", metas)
}

func (c *call) submitJob() *reply {
	if !c.allowed(rightSubmit, nil) {
		return notAuthorized()
	}
	if len(c.args) < 2 {
		return fail(statusSyntax, "", "syntax error: usage: submit_job job_folder")
	}
	if c.upload == nil {
		return fail(statusSyntax, "", "submit_job: the job folder comes through the upload stream (NVFlare's push_folder), not in the command")
	}
	if c.ss.s.RequireSigned {
		if err := checkSigned(c.upload, c.ss.s.Registrar.Root, c.sess.user); err != nil {
			return fail(statusInvalidJobDef, err.Error(), "%v", err)
		}
	}
	j, err := c.ss.s.Jobs.Submit(c.upload, jobs.Submitter{Name: c.sess.user, Org: c.sess.org, Role: c.sess.role})
	if err != nil {
		return fail(statusInvalidJobDef, err.Error(), "%v", err)
	}
	if j.JobFolderName != c.args[1] {
		c.ss.s.logf("job %s: submitted as %s, its folder is %s", j.JobID, flare.LogSafe(c.args[1]), j.JobFolderName)
	}
	return newReply().str("Submitted job: %s", j.JobID).success().meta("job_id", j.JobID)
}

func (c *call) abortJob() *reply {
	j, bad := c.job()
	if bad != nil {
		return bad
	}
	if !c.allowed(rightManage, j) {
		return notAuthorized()
	}
	var text string
	switch {
	case jobs.Finished(j.Status):
		text = fmt.Sprintf("Job for %s is already completed.", j.JobID)
	case j.Status == jobs.Submitted:
		if err := c.ss.s.Jobs.Abort(j.JobID); err != nil {
			return fail(statusInternal, err.Error(), "%v", err)
		}
		text = fmt.Sprintf("Aborted the job %s before running it.", j.JobID)
	default:
		go c.ss.s.Jobs.Abort(j.JobID) // returns once the job has ended
		text = "Abort signal has been sent to the server app."
	}
	return newReply().str("%s", text).success().meta("info", text)
}

func (c *call) cloneJob() *reply {
	j, bad := c.job()
	if bad != nil {
		return bad
	}
	if !c.allowed(rightSubmit, nil) || !c.allowed(rightClone, j) {
		return notAuthorized()
	}
	data, err := c.ss.s.Jobs.JobZip(j.JobID)
	if err != nil {
		return fail(statusInternal, err.Error(), "%v", err)
	}
	n, err := c.ss.s.Jobs.Submit(data, jobs.Submitter{Name: c.sess.user, Org: c.sess.org, Role: c.sess.role})
	if err != nil {
		return fail(statusInvalidJobDef, err.Error(), "%v", err)
	}
	return newReply().str("Cloned job %s as: %s", j.JobID, n.JobID).success().meta("job_id", n.JobID)
}

func (c *call) deleteJob() *reply {
	j, bad := c.job()
	if bad != nil {
		return bad
	}
	if !c.allowed(rightManage, j) {
		return notAuthorized()
	}
	if j.Status == jobs.Running || j.Status == jobs.Dispatched {
		return fail(statusJobRunning, j.JobID, "job: %s is running, could not be deleted at this time.", j.JobID)
	}
	if err := c.ss.s.Jobs.Delete(j.JobID); err != nil {
		return fail(statusInternal, err.Error(), "%v", err)
	}
	return newReply().str("Job %s deleted. Submit records marked deleted: 0.", j.JobID).success().
		meta("job_id", j.JobID).meta("submit_records_marked_deleted", 0)
}

// maxDownloadFiles bounds the files a session holds for download.
const maxDownloadFiles = 12

func (c *call) downloadJob() *reply {
	j, bad := c.job()
	if bad != nil {
		return bad
	}
	if !c.allowed(rightDownload, j) {
		return notAuthorized()
	}
	if !jobs.Finished(j.Status) {
		return fail(statusJobRunning, j.JobID, "job %s is not done", j.JobID)
	}
	jobZip, err := c.ss.s.Jobs.JobZip(j.JobID)
	if err != nil {
		return fail(statusInternal, err.Error(), "%v", err)
	}
	ws, err := c.ss.s.Jobs.Workspace(j.JobID)
	if err != nil {
		return fail(statusInternal, err.Error(), "%v", err)
	}
	metaJSON, _ := json.MarshalIndent(metaDict(j), "", "  ")
	files := [][2]any{}
	add := func(name string, data []byte) {
		ref := "R" + flare.NewUUID()
		c.ss.mu.Lock()
		c.ss.files[ref] = data
		c.ss.mu.Unlock()
		files = append(files, [2]any{name, ref})
	}
	c.ss.mu.Lock()
	n := len(c.ss.files)
	c.ss.mu.Unlock()
	if n+3 > maxDownloadFiles {
		return fail(statusError, "", "%d downloads pending on this session; finish them first", n)
	}
	if ws != nil {
		add("workspace.zip", ws)
	}
	add("meta.json", metaJSON)
	add("job.zip", jobZip)
	return newReply().str("OK").meta("status", statusOK).meta("info", "").meta("source_fqcn", "server").
		meta("files", files).meta("tx_id", flare.NewUUID()).meta("folder_name", j.JobID)
}

// targets parses server|client|all [sites]: the sites named (all the
// online ones for none), and whether the server is a target.
func (c *call) targets(args []string) (server bool, sites []string, bad *reply) {
	if len(args) == 0 {
		return false, nil, fail(statusSyntax, "", "syntax error: missing target type (server|client|all)")
	}
	online := c.ss.s.Online()
	up := map[string]bool{}
	for _, s := range online {
		up[s] = true
	}
	switch args[0] {
	case "server":
		return true, nil, nil
	case "client", "all":
		server = args[0] == "all"
		if len(args) == 1 {
			if len(online) == 0 && !server {
				return false, nil, fail(statusInvalidTarget, "no clients available", "no clients available")
			}
			return server, online, nil
		}
		var badNames []string
		for _, s := range args[1:] {
			if !up[s] {
				badNames = append(badNames, flare.LogSafe(s))
			} else {
				sites = append(sites, s)
			}
		}
		if len(badNames) > 0 {
			text := "invalid client(s): " + strings.Join(badNames, ", ")
			return false, nil, fail(statusInvalidTarget, text, "%s", text)
		}
		return server, sites, nil
	}
	return false, nil, fail(statusInvalidTarget, "", "unknown target type %s", flare.LogSafe(args[0]))
}

// askSites sends an admin request to each site, at once, and returns the
// replies (nil for none in time).
func (c *call) askSites(sites []string, topic string, headers msgpk.Map) map[string]*fobs.Message {
	out := map[string]*fobs.Message{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	h := append(msgpk.Map{{Key: "admin_command", Value: c.args[0]}, {Key: "require_authz", Value: "true"},
		{Key: "_userName", Value: c.sess.user}, {Key: "_userOrg", Value: c.sess.org}, {Key: "_userRole", Value: c.sess.role}}, headers...)
	for _, s := range sites {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), c.wait)
			defer cancel()
			m, err := c.ss.s.Ask(ctx, s, topic, h, "")
			if err != nil {
				c.ss.s.logf("admin %s: site %s: %s: %v", c.sess.user, s, topic, err)
				if m == nil {
					return
				}
			}
			mu.Lock()
			out[s] = m
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

func bodyText(m *fobs.Message) string {
	switch b := m.Body.(type) {
	case string:
		return b
	case []byte:
		return string(b)
	}
	return fmt.Sprint(m.Body)
}

func (c *call) checkStatus() *reply {
	if !c.allowed(rightView, nil) {
		return notAuthorized()
	}
	server, sites, bad := c.targets(c.args[1:])
	if bad != nil {
		return bad
	}
	r := newReply()
	if server {
		running := c.ss.s.Jobs.Running()
		status := "stopped"
		if len(running) > 0 {
			status = "started"
		}
		r.str("Engine status: %s", status)
		jobRows := [][]any{{"JOB_ID", "APP NAME"}}
		jobMetas := []any{}
		for _, id := range running {
			jobRows = append(jobRows, []any{id, "app"})
			jobMetas = append(jobMetas, map[string]any{"app_name": "app", "job_id": id})
		}
		if len(running) > 0 {
			r.table(jobRows)
		}
		var regs []register.Site
		for _, s := range c.ss.s.Registrar.Sites() {
			if s.Type == "regular" {
				regs = append(regs, s)
			}
		}
		sort.Slice(regs, func(i, j int) bool { return regs[i].Name < regs[j].Name })
		r.str("Registered clients: %d ", len(regs))
		r.meta("status", statusOK).meta("info", "").meta("server_status", status).
			meta("server_start_time", float64(c.ss.s.started.UnixNano())/1e9).meta("jobs", jobMetas)
		if len(regs) > 0 {
			rows := [][]any{{"CLIENT", "FQCN", "FQSN", "LEAF", "TOKEN", "LAST CONNECT TIME"}}
			metas := []any{}
			for _, s := range regs {
				rows = append(rows, []any{s.Name, s.Name, s.Name, "True", s.Token, s.LastSeen.Format(time.ANSIC)})
				metas = append(metas, map[string]any{"client_name": s.Name, "fqcn": s.Name,
					"client_last_conn_time": float64(s.LastSeen.UnixNano()) / 1e9})
			}
			r.table(rows).meta("clients", metas)
		}
	}
	if len(sites) > 0 || (!server) {
		replies := c.askSites(sites, "train.check_status", nil)
		if len(replies) == 0 && !server {
			return fail(statusError, "", "no responses from clients")
		}
		rows := [][]any{{"CLIENT", "APP_NAME", "JOB_ID", "STATUS"}}
		metas := []any{}
		for _, s := range sites {
			m, ok := replies[s]
			if !ok {
				rows = append(rows, []any{s, "?", "?", "No Reply"})
				metas = append(metas, map[string]any{"client_name": s, "status": statusNoReply})
				continue
			}
			var body struct {
				Running []struct {
					App    string `json:"app_name"`
					JobID  string `json:"job_id"`
					Status string `json:"status"`
				} `json:"running_jobs"`
			}
			if err := json.Unmarshal([]byte(bodyText(m)), &body); err != nil {
				rows = append(rows, []any{s, "?", "?", flare.LogCut(bodyText(m))})
				metas = append(metas, map[string]any{"client_name": s, "status": statusError})
				continue
			}
			if len(body.Running) == 0 {
				rows = append(rows, []any{s, "?", "?", "No Jobs"})
				metas = append(metas, map[string]any{"client_name": s, "status": "no_jobs"})
			}
			for _, j := range body.Running {
				rows = append(rows, []any{s, j.App, j.JobID, j.Status})
				metas = append(metas, map[string]any{"client_name": s, "app_name": j.App, "job_id": j.JobID, "status": j.Status})
			}
		}
		r.table(rows).meta("client_status", metas)
	}
	return r
}

// runningJob checks args[1] as a running job for show_stats/show_errors.
func (c *call) runningJob() (*jobs.Meta, *reply) {
	j, bad := c.job()
	if bad != nil {
		return nil, bad
	}
	if j.Status != jobs.Running {
		return nil, fail(statusJobNotRunning, j.JobID, "Job_id: %s is not running.", j.JobID)
	}
	return j, nil
}

func (c *call) siteInfo(topic string, serverPart func(j *jobs.Meta) any) *reply {
	j, bad := c.runningJob()
	if bad != nil {
		return bad
	}
	if !c.allowed(rightView, j) {
		return notAuthorized()
	}
	server, sites, bad := c.targets(c.args[2:])
	if bad != nil {
		return bad
	}
	out := map[string]any{}
	if server {
		out["server"] = serverPart(j)
	}
	if len(sites) > 0 {
		cl := map[string]any{}
		for s, m := range c.askSites(sites, topic, msgpk.Map{{Key: "job_id", Value: j.JobID}}) {
			var v any
			if err := json.Unmarshal([]byte(bodyText(m)), &v); err != nil {
				v = "invalid_reply"
			}
			cl[s] = v
		}
		out["client"] = cl
	}
	return newReply().add("dict", out)
}

func (c *call) showStats() *reply {
	return c.siteInfo("info.show_stats", func(j *jobs.Meta) any {
		st := map[string]any{"ServerRunner": map[string]any{"job_id": j.JobID, "status": "started"}}
		if c.ss.s.Stats != nil {
			for k, v := range c.ss.s.Stats(j.JobID) {
				st[k] = v
			}
		}
		return st
	})
}

func (c *call) showErrors() *reply {
	return c.siteInfo("info.show_errors", func(*jobs.Meta) any { return "No Error" })
}

func (c *call) resetErrors() *reply {
	return c.siteInfo("info.reset_errors", func(j *jobs.Meta) any { return "reset the server error stats for job: " + j.JobID })
}

// memInfo reads /proc/meminfo as psutil's virtual_memory fields.
func memInfo() [][]any {
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return [][]any{{"METRICS", "VALUE"}}
	}
	kb := map[string]int64{}
	for _, line := range strings.Split(string(data), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) > 0 {
			n, _ := strconv.ParseInt(f[0], 10, 64)
			kb[k] = n * 1024
		}
	}
	total, avail := kb["MemTotal"], kb["MemAvailable"]
	cached := kb["Cached"] + kb["SReclaimable"]
	used := total - kb["MemFree"] - kb["Buffers"] - cached
	pct := 0.0
	if total > 0 {
		pct = float64(total-avail) / float64(total) * 100
	}
	rows := [][]any{{"METRICS", "VALUE"}}
	for _, kv := range []struct {
		k string
		v any
	}{{"total", total}, {"available", avail}, {"percent", fmt.Sprintf("%.1f", pct)}, {"used", used}, {"free", kb["MemFree"]},
		{"active", kb["Active"]}, {"inactive", kb["Inactive"]}, {"buffers", kb["Buffers"]}, {"cached", cached},
		{"shared", kb["Shmem"]}, {"slab", kb["Slab"]}} {
		rows = append(rows, []any{kv.k, fmt.Sprint(kv.v)})
	}
	if total > 0 {
		rows = append(rows, []any{"available_percent", fmt.Sprintf("%.1f", float64(avail)/float64(total)*100)})
	}
	return rows
}

func (c *call) sysInfo() *reply {
	if !c.allowed(rightOperate, nil) {
		return notAuthorized()
	}
	if len(c.args) < 2 || (c.args[1] != "server" && c.args[1] != "client") {
		t := ""
		if len(c.args) > 1 {
			t = c.args[1]
		}
		return newReply().str("invalid target type %s. Usage: sys_info server|client <client-name>", flare.LogSafe(t))
	}
	if c.args[1] == "server" {
		return newReply().table(memInfo())
	}
	_, sites, bad := c.targets(c.args[1:])
	if bad != nil {
		return bad
	}
	r := newReply()
	replies := c.askSites(sites, "sys.info", nil)
	for _, s := range sites {
		r.str("Client: %s", s)
		m, ok := replies[s]
		rows := [][]any{{"METRICS", "VALUE"}}
		var d map[string]any
		if ok && json.Unmarshal([]byte(bodyText(m)), &d) == nil {
			keys := make([]string, 0, len(d))
			for k := range d {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				rows = append(rows, []any{k, fmt.Sprint(d[k])})
			}
		}
		r.table(rows)
	}
	return r
}

func (c *call) removeClient() *reply {
	if !c.allowed(rightOperate, nil) {
		return notAuthorized()
	}
	_, sites, bad := c.targets(append([]string{"client"}, c.args[1:]...))
	if bad != nil {
		return bad
	}
	if len(c.args) < 2 {
		return fail(statusSyntax, "", "syntax error: usage: remove_client <client-name>")
	}
	for _, s := range sites {
		c.ss.s.Registrar.Remove(s)
		c.ss.s.logf("admin %s removed client %s", c.sess.user, s)
	}
	return newReply().success()
}

func (c *call) shutdown() *reply {
	if !c.allowed(rightOperate, nil) {
		return notAuthorized()
	}
	server, sites, bad := c.targets(c.args[1:])
	if bad != nil {
		return bad
	}
	if server {
		if running := c.ss.s.Jobs.Running(); len(running) > 0 {
			return fail(statusJobRunning, running[0], "There are still jobs running. Please let them finish or abort_job before shutdown.")
		}
		if c.args[1] == "server" {
			for _, s := range c.ss.s.Registrar.Sites() {
				if s.Type == "regular" {
					return fail(statusClientsUp, "", "There are still active clients. Shutdown all clients first.")
				}
			}
		}
	}
	r := newReply()
	if len(sites) > 0 {
		replies := c.askSites(sites, "train.shutdown", nil)
		rows := [][]any{{"CLIENT", "RESPONSE"}}
		failed := false
		for _, s := range sites {
			m, ok := replies[s]
			text := "No Reply"
			if ok {
				text = bodyText(m)
			} else {
				failed = true
			}
			rows = append(rows, []any{s, text})
		}
		r.table(rows)
		if failed {
			r.meta("status", statusError).meta("info", "failed to shut down all clients")
		}
	}
	if server {
		r.str("Flare Server has been shutdown.").add("shutdown", "Goodbye!")
		c.ss.s.logf("admin %s shut the server down", c.sess.user)
		if c.ss.s.Shutdown != nil {
			// After the reply has gone out.
			time.AfterFunc(500*time.Millisecond, c.ss.s.Shutdown)
		}
	}
	return r.success()
}

// checkSigned checks that a job zip (one top folder) is signed, every
// folder of it, by user's certificate from the project's root.
func checkSigned(data []byte, root *x509.Certificate, user string) error {
	tmp, err := os.MkdirTemp("", "flarego-job-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	dir := filepath.Join(tmp, "job")
	if err := flare.UnzipApp(data, dir); err != nil {
		return err
	}
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) != 1 || !entries[0].IsDir() {
		return errors.New("the job is not one folder")
	}
	cert, err := deploy.Verify(filepath.Join(dir, entries[0].Name()), root)
	if err != nil {
		return fmt.Errorf("job %s: %w (in secure mode a job is signed by its submitter, as NVFlare's admin client signs it)", entries[0].Name(), err)
	}
	if cert.Subject.CommonName != user {
		return fmt.Errorf("job %s is signed by %s, not by its submitter %s", entries[0].Name(), flare.LogSafe(cert.Subject.CommonName), user)
	}
	return nil
}
