package register

import (
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/cellnet/cell"
	"github.com/flarego/flarego/flare/cellnet/fobs"
	"github.com/flarego/flarego/flare/cellnet/lobs"
	"github.com/flarego/flarego/flare/cellnet/msgpk"
	"github.com/flarego/flarego/persistor/pickle"
)

// A Registrar is the server's side of registration, as NVFlare 2.8's
// server does it: it answers challenge with its certificate, its name and
// its signature over its name + the site's nonce; on register it checks
// the site's certificate against the project's root CA, that the
// certificate names the site, and the site's signature over its name +
// the nonce it was given; it issues a token and the token's signature,
// and checks them ([Registrar.Check]) on every later message, bound to
// the cell that registered (or a cell of it: its jobs). Heartbeats keep a
// site alive; one silent for Timeout is dropped.
type Registrar struct {
	// Name is the server's identity (its certificate's common name).
	Name    string
	CertPEM []byte
	Key     *rsa.PrivateKey
	Root    *x509.Certificate
	// Timeout drops a site without a heartbeat for that long (NVFlare's
	// heart_beat_timeout; default 600 s).
	Timeout time.Duration
	// MaxSites bounds the sites registered at once (default 1024).
	MaxSites int
	// OnRegister, OnHeartbeat and OnQuit, when set, are told of a site's
	// registration (c is the cell it came on), heartbeats and quitting.
	// OnRegister may refuse the site: the registration is then undone.
	OnRegister  func(s Site, c *cell.Cell) error
	OnHeartbeat func(s Site)
	OnQuit      func(s Site)
	// OnJobReport, when set, is told a site's report of how one of its
	// jobs ended (code JobFinished, JobAborted or JobException).
	OnJobReport func(s Site, jobID string, code int64, reason string)

	mu      sync.Mutex
	nonces  map[nonceKey]nonce // (connection, name) → the nonce its challenge got
	byToken map[string]*Site
}

type nonceKey struct {
	c    *cell.Cell
	name string
}

type nonce struct {
	value string
	at    time.Time
}

// A Site is a registered site.
type Site struct {
	Name, Token, SSID string
	// Type is the client_type it registered as: regular for a site,
	// admin for an admin console's session.
	Type string
	// Origin is the cell an admin session registered from.
	Origin   string
	LastSeen time.Time
	JobIDs   []string
}

// Errors of a message that does not check out.
var (
	ErrUnknownToken = errors.New("unknown token")
	ErrBadToken     = errors.New("token does not check out")
)

// challengeTTL bounds how long a challenge's nonce stays good.
const challengeTTL = time.Minute

// Serve answers challenge, register, heart_beat and quit on c, and from
// then on lets in only the requests of registered sites ([Registrar.Check]).
func (r *Registrar) Serve(c *cell.Cell) {
	c.SetGate(func(m *cell.Message) error { _, err := r.Check(m); return err })
	c.Handle("task", "challenge", func(m *cell.Message) *cell.Message { return r.challenge(c, m) })
	c.Handle("task", "register", func(m *cell.Message) *cell.Message { return r.register(c, m) })
	c.Handle("task", "heart_beat", func(m *cell.Message) *cell.Message {
		s, err := r.Check(m)
		if err != nil {
			return refusal(cell.RCUnauthenticated, err)
		}
		var jobs []string
		if l, ok := m.Header("job_ids").([]any); ok {
			for _, j := range l {
				if id, ok := j.(string); ok && len(jobs) < 64 {
					jobs = append(jobs, id)
				}
			}
		}
		r.mu.Lock()
		s.LastSeen, s.JobIDs = time.Now(), jobs
		cp := *s
		r.mu.Unlock()
		if r.OnHeartbeat != nil {
			r.OnHeartbeat(cp)
		}
		return &cell.Message{Headers: msgpk.Map{{Key: "message", Value: "Heartbeat response"}}}
	})
	// A site's report of how a job ended (NVFlare main waits for it):
	// passed on to OnJobReport, answered ok.
	c.Handle("task", "report_job_failure", func(m *cell.Message) *cell.Message {
		s, err := r.Check(m)
		if err != nil {
			return refusal(cell.RCUnauthenticated, err)
		}
		if r.OnJobReport == nil {
			return &cell.Message{}
		}
		v, err := fobs.DecodeBytes(m.Payload, fobs.Options{})
		rep, _ := v.(msgpk.Map)
		if err != nil || rep == nil {
			return refusal(cell.RCInvalidRequest, fmt.Errorf("a job report that is not a dict: %v", err))
		}
		code, _ := rep.Get("code")
		n, _ := code.(int64)
		reason, _ := rep.Get("reason")
		why, _ := reason.(string)
		r.OnJobReport(*s, rep.String("job_id"), n, why)
		return &cell.Message{}
	})
	c.Handle("task", "quit", func(m *cell.Message) *cell.Message {
		s, err := r.Check(m)
		if err != nil {
			return refusal(cell.RCUnauthenticated, err)
		}
		r.mu.Lock()
		delete(r.byToken, s.Token)
		cp := *s
		r.mu.Unlock()
		if r.OnQuit != nil {
			r.OnQuit(cp)
		}
		return &cell.Message{Headers: msgpk.Map{{Key: "message", Value: "Removed client"}}}
	})
}

func refusal(rc string, err error) *cell.Message {
	return &cell.Message{Headers: msgpk.Map{{Key: cell.HReturnCode, Value: rc}, {Key: cell.HError, Value: flare.LogCut(err.Error())}}}
}

func (r *Registrar) init() {
	if r.nonces == nil {
		r.nonces = map[nonceKey]nonce{}
		r.byToken = map[string]*Site{}
	}
}

// challenge answers a challenge; its nonce is kept for the registration
// that comes on the same connection (another connection asking for the
// same name does not replace it).
func (r *Registrar) challenge(c *cell.Cell, m *cell.Message) *cell.Message {
	cn, siteNonce := m.String("cn"), m.String("nonce")
	if err := flare.CheckName("site name", cn); err != nil {
		return refusal(cell.RCInvalidRequest, err)
	}
	if siteNonce == "" || len(siteNonce) > 128 {
		return refusal(cell.RCInvalidRequest, errors.New("challenge without a nonce"))
	}
	sig, err := sign(r.Key, r.Name+siteNonce)
	if err != nil {
		return refusal(cell.RCProcessException, err)
	}
	n := flare.NewUUID()
	r.mu.Lock()
	r.init()
	if len(r.nonces) >= 4*r.maxSites() {
		// Challenges nobody followed up: drop the stale ones.
		for k, v := range r.nonces {
			if time.Since(v.at) > challengeTTL {
				delete(r.nonces, k)
			}
		}
	}
	if len(r.nonces) >= 4*r.maxSites() {
		r.mu.Unlock()
		return refusal(cell.RCServiceUnavailable, errors.New("too many challenges pending"))
	}
	r.nonces[nonceKey{c, cn}] = nonce{n, time.Now()}
	r.mu.Unlock()
	sh := flare.NewShareable()
	sh.Extra = []pickle.Item{{Key: "nonce", Value: n}, {Key: "signature", Value: sig}, {Key: "cn", Value: r.Name}, {Key: "cert", Value: r.CertPEM}}
	b, err := fobs.Encode(sh)
	if err != nil {
		return refusal(cell.RCProcessException, err)
	}
	return &cell.Message{Payload: b}
}

func (r *Registrar) maxSites() int {
	if r.MaxSites <= 0 {
		return 1024
	}
	return r.MaxSites
}

func (r *Registrar) register(c *cell.Cell, m *cell.Message) *cell.Message {
	name, typ := m.String("client_name"), m.String("client_type")
	if typ == "" {
		typ = "regular"
	}
	if typ != "regular" && typ != "admin" {
		return refusal(cell.RCAuthentication, fmt.Errorf("registration of %s refused: client_type %q (regular or admin)", flare.LogCut(name), flare.LogCut(typ)))
	}
	s, err := r.checkRegistration(c, name, typ, m.String(cell.HOrigin), m.Payload)
	if err != nil {
		return refusal(cell.RCAuthentication, fmt.Errorf("registration of %s refused: %w", flare.LogCut(name), err))
	}
	if r.OnRegister != nil {
		if err := r.OnRegister(*s, c); err != nil {
			r.mu.Lock()
			delete(r.byToken, s.Token)
			r.mu.Unlock()
			return refusal(cell.RCAuthentication, fmt.Errorf("registration of %s refused: %w", flare.LogCut(name), err))
		}
	}
	tsig, err := sign(r.Key, name+s.Token)
	if err != nil {
		return refusal(cell.RCProcessException, err)
	}
	b, err := msgpk.Marshal(msgpk.Map{{Key: "__token__", Value: s.Token},
		{Key: "__token_signature__", Value: base64.StdEncoding.EncodeToString(tsig)}, {Key: "ssid", Value: s.SSID}})
	if err != nil {
		return refusal(cell.RCProcessException, err)
	}
	return &cell.Message{Payload: (&lobs.Container{Main: b}).Encode(lobs.V27)}
}

// checkRegistration checks a register request and registers the site.
func (r *Registrar) checkRegistration(c *cell.Cell, name, typ, origin string, payload []byte) (*Site, error) {
	if err := flare.CheckName("site name", name); err != nil {
		return nil, err
	}
	sh, err := decodeShareable(&cell.Message{Payload: payload})
	if err != nil {
		return nil, err
	}
	certPEM, _ := extra(sh, "cert").([]byte)
	sig, _ := extra(sh, "signature").([]byte)
	cn, _ := extra(sh, "cn").(string)
	if cn != name {
		return nil, fmt.Errorf("it signs as %q", flare.LogCut(cn))
	}
	cert, pub, err := r.checkCert(certPEM, name, "its certificate")
	if err != nil {
		return nil, err
	}
	// NVFlare puts a role only in admins' certificates: a site's has none,
	// an admin's one of the four. Neither may pass for the other.
	role := CertRole(cert)
	switch {
	case typ == "regular" && role != "":
		return nil, fmt.Errorf("it registers as a site with an admin's certificate (role %s)", flare.LogSafe(role))
	case typ == "admin" && !AdminRole(role):
		return nil, errors.New("it registers as an admin without an admin's certificate (no project_admin, org_admin, lead or member role)")
	}
	r.mu.Lock()
	r.init()
	n, ok := r.nonces[nonceKey{c, name}]
	delete(r.nonces, nonceKey{c, name})
	r.mu.Unlock()
	if !ok || time.Since(n.at) > challengeTTL {
		return nil, errors.New("no challenge pending for it")
	}
	if err := verify(pub, name+n.value, sig); err != nil {
		return nil, errors.New("bad signature")
	}
	s := &Site{Name: name, Type: typ, Token: flare.NewUUID(), SSID: "NA", LastSeen: time.Now()}
	if typ == "admin" {
		// An admin session is its own cell (_admin_<uuid>), not one
		// named after the user; a user may hold several sessions.
		s.Origin = origin
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for tok, old := range r.byToken {
		if old.Name == name && typ == "regular" && old.Type == "regular" {
			delete(r.byToken, tok) // a site that registers again voids its old token
		}
	}
	count := 0
	for _, old := range r.byToken {
		if old.Type == typ {
			count++
		}
	}
	if limit := r.maxSites(); typ == "admin" && count >= maxAdminSessions || typ != "admin" && count >= limit {
		return nil, fmt.Errorf("%d %s registrations already", count, typ)
	}
	r.byToken[s.Token] = s
	return s, nil
}

// Check checks a message's authentication headers: a token this server
// issued, its signature, the site's name, and an origin that is the site
// or one of its cells (site-1.<job id>). It marks nothing alive.
func (r *Registrar) Check(m *cell.Message) (*Site, error) {
	tok, name := m.String("__token__"), m.String("client_name")
	r.mu.Lock()
	r.init()
	s := r.byToken[tok]
	r.mu.Unlock()
	if s == nil {
		return nil, ErrUnknownToken
	}
	if s.Name != name {
		return nil, fmt.Errorf("%w: it is %s's, not %s's", ErrBadToken, s.Name, flare.LogCut(name))
	}
	sig, err := base64.StdEncoding.DecodeString(m.String("__token_signature__"))
	if err != nil || verify(&r.Key.PublicKey, name+tok, sig) != nil {
		return nil, fmt.Errorf("%w: bad signature", ErrBadToken)
	}
	if o := m.String(cell.HOrigin); s.Type == "admin" {
		if o != s.Origin {
			return nil, fmt.Errorf("%w: an admin session's token sent from %s, not from %s", ErrBadToken, flare.LogCut(o), s.Origin)
		}
	} else if o != name && !strings.HasPrefix(o, name+".") {
		return nil, fmt.Errorf("%w: sent from %s, not from %s or its cells", ErrBadToken, flare.LogCut(o), name)
	}
	return s, nil
}

// Sites are the sites registered now; those silent past Timeout are
// dropped first.
func (r *Registrar) Sites() []Site {
	timeout := r.Timeout
	if timeout <= 0 {
		timeout = 600 * time.Second
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.init()
	var out []Site
	for tok, s := range r.byToken {
		if time.Since(s.LastSeen) > timeout {
			delete(r.byToken, tok)
			continue
		}
		out = append(out, *s)
	}
	return out
}

// maxAdminSessions bounds the admin sessions registered at once (each is
// dropped when its connection closes: RemoveOrigin).
const maxAdminSessions = 256

// RemoveOrigin drops the admin registrations made from the cell origin
// (its connection closed).
func (r *Registrar) RemoveOrigin(origin string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.init()
	for tok, s := range r.byToken {
		if s.Type == "admin" && s.Origin == origin {
			delete(r.byToken, tok)
		}
	}
}

// oidUnstructuredName holds a provisioned admin's role.
var oidUnstructuredName = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 2}

// CertRole is the role NVFlare's provisioning writes into an admin's
// certificate (unstructuredName), "" for none (a site's or server's).
func CertRole(cert *x509.Certificate) string {
	for _, n := range cert.Subject.Names {
		if n.Type.Equal(oidUnstructuredName) {
			if s, ok := n.Value.(string); ok {
				return s
			}
		}
	}
	return ""
}

// AdminRole says whether role is one of NVFlare's admin roles.
func AdminRole(role string) bool {
	switch role {
	case "project_admin", "org_admin", "lead", "member":
		return true
	}
	return false
}

// Remove drops a site's registration (NVFlare's remove_client): its
// token no longer checks out, and the site registers again.
func (r *Registrar) Remove(name string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.init()
	found := false
	for tok, s := range r.byToken {
		if s.Name == name && s.Type == "regular" {
			delete(r.byToken, tok)
			found = true
		}
	}
	return found
}

// ServerAuth are the authentication headers of the server's messages to
// an admin session: NVFlare's admin cell takes only messages signed as
// the server (client name and token "server", signed over both).
func (r *Registrar) ServerAuth() (*cell.Auth, error) {
	sig, err := sign(r.Key, "serverserver")
	if err != nil {
		return nil, err
	}
	return &cell.Auth{ClientName: "server", SSID: "NA", Token: "server", TokenSignature: base64.StdEncoding.EncodeToString(sig)}, nil
}

// VerifyLogin checks an admin's certificate login: a certificate from
// the project's root CA issued to user, and the user's signature over
// their name. It returns the certificate.
func (r *Registrar) VerifyLogin(user string, certPEM, signature []byte) (*x509.Certificate, error) {
	cert, pub, err := r.checkCert(certPEM, user, "the certificate")
	if err != nil {
		return nil, err
	}
	if err := verify(pub, user, signature); err != nil {
		return nil, errors.New("bad signature")
	}
	return cert, nil
}

// checkCert checks a PEM certificate (what names it in errors): from the
// project's root CA, issued to name, with an RSA key.
func (r *Registrar) checkCert(certPEM []byte, name, what string) (*x509.Certificate, *rsa.PublicKey, error) {
	block, _ := pem.Decode(certPEM)
	if block == nil {
		return nil, nil, errors.New("no certificate")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, nil, err
	}
	if err := cert.CheckSignatureFrom(r.Root); err != nil {
		return nil, nil, fmt.Errorf("%s is not from this project's root CA", what)
	}
	if cert.Subject.CommonName != name {
		return nil, nil, fmt.Errorf("%s is issued to %q", what, flare.LogCut(cert.Subject.CommonName))
	}
	pub, ok := cert.PublicKey.(*rsa.PublicKey)
	if !ok {
		return nil, nil, errors.New("not an RSA key")
	}
	return cert, pub, nil
}
