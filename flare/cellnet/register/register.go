// Package register signs a site in to an NVFlare 2.4+ server, as NVFlare's
// client does (nvflare.private.fed.authenticator), over a cell (package
// cell):
//
//  1. challenge (channel task): the site sends its name and a nonce; the
//     server answers with its certificate, its name and a signature over
//     its name + the site's nonce, and a nonce of its own. [Register]
//     checks that the certificate is signed by the project's root CA, that
//     its common name is the name asserted and the identity the startup
//     kit expects, and the signature (RSA-PSS, MGF1-SHA256, maximum salt).
//  2. register: the site sends its certificate and its signature over its
//     name + the server's nonce; the server answers with a token, the
//     token's signature (over site name + token, checked with the server's
//     certificate) and an ssid. These go, as [cell.Auth], on every later
//     message.
//
// A registered site then keeps alive with [Heartbeat] and says how each
// job ended with [ReportJobOutcome].
//
// As in NVFlare, the certificates' validity periods are not checked (the
// same provisioned certificates serve a project for its whole life); the
// signatures and names are.
package register

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/cellnet/cell"
	"github.com/flarego/flarego/flare/cellnet/fobs"
	"github.com/flarego/flarego/flare/cellnet/lobs"
	"github.com/flarego/flarego/flare/cellnet/msgpk"
	"github.com/flarego/flarego/persistor/pickle"
)

// Identity is what a site proves itself with: its certificate and key,
// the project's root CA, and the server identity its kit names.
type Identity struct {
	Name           string // the site's name, its certificate's CN
	Project        string
	CertPEM        []byte
	Key            *rsa.PrivateKey
	Root           *x509.Certificate
	ServerIdentity string // servers[0].identity of fed_client.json
	// Type is the client_type it registers as: "" (regular) for a
	// site, "admin" for an admin console's session.
	Type string
}

// LoadIdentity reads a site's certificate, key and the root CA (PEM files,
// as NVFlare's provisioning writes them).
func LoadIdentity(name, project, certFile, keyFile, rootFile, serverIdentity string, read func(string) ([]byte, error)) (*Identity, error) {
	certPEM, err := read(certFile)
	if err != nil {
		return nil, err
	}
	keyPEM, err := read(keyFile)
	if err != nil {
		return nil, err
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s, %s: %w", certFile, keyFile, err)
	}
	key, ok := pair.PrivateKey.(*rsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s: not an RSA key (NVFlare signs with RSA-PSS)", keyFile)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("%s: %w", certFile, err)
	}
	if leaf.Subject.CommonName != name {
		return nil, fmt.Errorf("%s is issued to %q, not to this site %q", certFile, leaf.Subject.CommonName, name)
	}
	rootPEM, err := read(rootFile)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(rootPEM)
	if block == nil {
		return nil, fmt.Errorf("%s: no PEM certificate", rootFile)
	}
	root, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", rootFile, err)
	}
	return &Identity{Name: name, Project: project, CertPEM: certPEM, Key: key, Root: root, ServerIdentity: serverIdentity}, nil
}

// pss is NVFlare's padding: PSS with MGF1-SHA256 and the largest salt
// (PSSSaltLengthAuto: the largest when signing, any when verifying).
var pss = &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto, Hash: crypto.SHA256}

func sign(key *rsa.PrivateKey, content string) ([]byte, error) {
	h := sha256.Sum256([]byte(content))
	return rsa.SignPSS(rand.Reader, key, crypto.SHA256, h[:], pss)
}

func verify(pub *rsa.PublicKey, content string, sig []byte) error {
	h := sha256.Sum256([]byte(content))
	return rsa.VerifyPSS(pub, crypto.SHA256, h[:], sig, pss)
}

// ErrIdentity wraps a server identity that does not check out.
var ErrIdentity = errors.New("the server's identity does not check out")

func decodeShareable(m *cell.Message) (*flare.Shareable, error) {
	v, err := fobs.DecodeBytes(m.Payload, fobs.Options{})
	if err != nil {
		return nil, err
	}
	s, ok := v.(*flare.Shareable)
	if !ok {
		return nil, fmt.Errorf("a %T, not a Shareable", v)
	}
	return s, nil
}

func extra(s *flare.Shareable, key string) any {
	for _, it := range s.Extra {
		if it.Key == key {
			return it.Value
		}
	}
	return nil
}

// Register signs id in through c and returns the headers to send from now on.
func Register(ctx context.Context, c *cell.Cell, id *Identity, clientIP string) (*cell.Auth, error) {
	nonce := flare.NewUUID()
	r, err := c.Request(ctx, "server", "task", "challenge", msgpk.Map{{Key: "cn", Value: id.Name}, {Key: "nonce", Value: nonce}}, nil, cell.EncodingNone)
	if err != nil {
		return nil, fmt.Errorf("challenge: %w", err)
	}
	ch, err := decodeShareable(r)
	if err != nil {
		return nil, fmt.Errorf("challenge reply: %w", err)
	}
	serverNonce, _ := extra(ch, "nonce").(string)
	serverCN, _ := extra(ch, "cn").(string)
	certPEM, _ := extra(ch, "cert").([]byte)
	sig, _ := extra(ch, "signature").([]byte)
	if serverCN != id.ServerIdentity {
		return nil, fmt.Errorf("%w: it calls itself %q, the kit expects %q", ErrIdentity, flare.LogCut(serverCN), id.ServerIdentity)
	}
	block, _ := pem.Decode(certPEM)
	if block == nil {
		return nil, fmt.Errorf("%w: no certificate in its answer", ErrIdentity)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrIdentity, err)
	}
	if err := cert.CheckSignatureFrom(id.Root); err != nil {
		return nil, fmt.Errorf("%w: its certificate is not from this project's root CA (%v)", ErrIdentity, err)
	}
	if cert.Subject.CommonName != serverCN {
		return nil, fmt.Errorf("%w: its certificate is issued to %q", ErrIdentity, flare.LogCut(cert.Subject.CommonName))
	}
	pub, ok := cert.PublicKey.(*rsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%w: not an RSA key", ErrIdentity)
	}
	if err := verify(pub, serverCN+nonce, sig); err != nil {
		return nil, fmt.Errorf("%w: bad signature on the challenge", ErrIdentity)
	}

	mySig, err := sign(id.Key, id.Name+serverNonce)
	if err != nil {
		return nil, err
	}
	sh := peerShareable(id.Name)
	sh.Extra = []pickle.Item{{Key: "cert", Value: id.CertPEM}, {Key: "signature", Value: mySig}, {Key: "cn", Value: id.Name}}
	typ := id.Type
	if typ == "" {
		typ = "regular"
		sh.Extra = append(sh.Extra, pickle.Item{Key: "site_config", Value: &pickle.Dict{Items: []pickle.Item{{Key: "allow_log_streaming", Value: false}}}})
	}
	payload, err := fobs.Encode(sh)
	if err != nil {
		return nil, err
	}
	r, err = c.Request(ctx, "server", "task", "register", msgpk.Map{{Key: "client_name", Value: id.Name}, {Key: "client_type", Value: typ},
		{Key: "client_ip", Value: clientIP}, {Key: "project_name", Value: id.Project}}, payload, cell.EncodingFOBS)
	if err != nil {
		return nil, fmt.Errorf("register: %w", err)
	}
	rc, err := lobs.Decode(r.Payload, lobs.V27)
	if err != nil {
		return nil, fmt.Errorf("register reply: %w", err)
	}
	v, err := fobs.Decode(rc, fobs.Options{})
	if err != nil {
		return nil, fmt.Errorf("register reply: %w", err)
	}
	m, _ := v.(msgpk.Map)
	a := &cell.Auth{ClientName: id.Name, Token: m.String("__token__"), TokenSignature: m.String("__token_signature__"), SSID: m.String("ssid")}
	if a.Token == "" {
		return nil, errors.New("register: the server gave no token")
	}
	tsig, err := base64.StdEncoding.DecodeString(a.TokenSignature)
	if err != nil || verify(pub, id.Name+a.Token, tsig) != nil {
		return nil, fmt.Errorf("%w: bad signature on the token", ErrIdentity)
	}
	c.SetAuth(a)
	return a, nil
}

// peerShareable is the Shareable a site's task-channel requests carry:
// its public FLContext as __peer_ctx__.
func peerShareable(name string) *flare.Shareable {
	sh := flare.NewShareable()
	sh.SetHeader("__peer_ctx__", &flare.FLContext{Props: []flare.Prop{{Name: "__run_num__", Value: ""}, {Name: "__identity_name__", Value: name},
		{Name: "__fqsn__", Value: name}, {Name: "__is_leaf__", Value: true}}})
	return sh
}

// Heartbeat tells the server the site is alive and which jobs it runs,
// and returns the server's answer (its reply headers may name jobs to
// abort).
func Heartbeat(ctx context.Context, c *cell.Cell, id *Identity, jobIDs []string) (*cell.Message, error) {
	payload, err := fobs.Encode(peerShareable(id.Name))
	if err != nil {
		return nil, err
	}
	jobs := make([]any, len(jobIDs))
	for i, j := range jobIDs {
		jobs[i] = j
	}
	return c.Request(ctx, "server", "task", "heart_beat", msgpk.Map{{Key: "project_name", Value: id.Project}, {Key: "job_ids", Value: jobs}},
		payload, cell.EncodingFOBS)
}

// Job outcomes a site reports, as NVFlare's client job process exit codes
// (JobReturnCode, ProcessExitCode).
const (
	JobFinished  = 0   // the job ran to its end
	JobAborted   = 9   // stopped: the server or its admin aborted it
	JobException = 101 // the job failed
)

// ReportJobOutcome tells the server how a job ended on the site (channel
// task, topic report_job_failure; payload {job_id, code, reason}, reason
// nil for JobFinished). NVFlare main (2.9) waits for it from every site
// of a job before it sets the job's final status: a site that stops
// naming the job in its heartbeats without having reported it fails the
// job (FINISHED:ABNORMAL). It answers with an empty ok reply. NVFlare 2.8.1
// and earlier act on failures only and send no reply: the wait then ends
// with ctx, and ReportJobOutcome returns ctx's error.
func ReportJobOutcome(ctx context.Context, c *cell.Cell, jobID string, code int, reason string) error {
	var why any
	if reason != "" {
		why = reason
	}
	payload, err := fobs.Encode(msgpk.Map{{Key: "job_id", Value: jobID}, {Key: "code", Value: int64(code)}, {Key: "reason", Value: why}})
	if err != nil {
		return err
	}
	_, err = c.Request(ctx, "server", "task", "report_job_failure", nil, payload, cell.EncodingFOBS)
	return err
}

// Sign signs content as NVFlare's identities do (RSA-PSS, SHA-256).
func Sign(key *rsa.PrivateKey, content string) ([]byte, error) { return sign(key, content) }
