package register

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/flarego/flarego/flare/cellnet/cell"
	"github.com/flarego/flarego/flare/cellnet/msgpk"
	"github.com/flarego/flarego/flare/internal/celltest"
)

func registrar(t *testing.T, p *celltest.PKI) *Registrar {
	cert, key := p.Leaf(t, "server1")
	return &Registrar{Name: "server1", CertPEM: cert, Key: key, Root: p.Root}
}

func identity(t *testing.T, p *celltest.PKI, name string) *Identity {
	cert, key := p.Leaf(t, name)
	return &Identity{Name: name, Project: "proj", CertPEM: cert, Key: key, Root: p.Root, ServerIdentity: "server1"}
}

// connect joins a site's cell to the registrar over an in-memory link.
func connect(t *testing.T, r *Registrar, name string) *cell.Cell {
	a, b := cell.Pipe()
	site, srv := cell.New(a, name), cell.New(b, "server")
	r.Serve(srv)
	t.Cleanup(func() { site.Close() })
	return site
}

// Our site registers with our server's registrar as with NVFlare's: the
// token it gets checks out on its messages and its jobs' cells, and on no
// one else's.
func TestRegistrar(t *testing.T) {
	p := celltest.NewPKI(t)
	r := registrar(t, p)
	id := identity(t, p, "site-1")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	site := connect(t, r, "site-1")
	a, err := Register(ctx, site, id, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Heartbeat(ctx, site, id, []string{"job1"}); err != nil {
		t.Fatal(err)
	}
	if s := r.Sites(); len(s) != 1 || s[0].Name != "site-1" || len(s[0].JobIDs) != 1 {
		t.Fatalf("sites %+v", s)
	}
	msg := func(origin string, a *cell.Auth) *cell.Message {
		return &cell.Message{Headers: msgpk.Map{{Key: cell.HOrigin, Value: origin}, {Key: "client_name", Value: a.ClientName},
			{Key: "__token__", Value: a.Token}, {Key: "__token_signature__", Value: a.TokenSignature}}}
	}
	if _, err := r.Check(msg("site-1.job1", a)); err != nil {
		t.Fatalf("a job cell of the site: %v", err)
	}
	for name, m := range map[string]*cell.Message{
		"another origin":  msg("site-2", a),
		"a prefix origin": msg("site-10", a),
		"another name":    msg("site-1", &cell.Auth{ClientName: "site-2", Token: a.Token, TokenSignature: a.TokenSignature}),
		"a forged token":  msg("site-1", &cell.Auth{ClientName: "site-1", Token: "x", TokenSignature: a.TokenSignature}),
		"a bad signature": msg("site-1", &cell.Auth{ClientName: "site-1", Token: a.Token, TokenSignature: "AAAA"}),
	} {
		if _, err := r.Check(m); !errors.Is(err, ErrBadToken) && !errors.Is(err, ErrUnknownToken) {
			t.Errorf("%s: %v", name, err)
		}
	}
	// Registering again voids the old token.
	b, err := Register(ctx, site, id, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Check(msg("site-1", a)); !errors.Is(err, ErrUnknownToken) {
		t.Fatalf("the old token: %v", err)
	}
	if _, err := r.Check(msg("site-1", b)); err != nil {
		t.Fatal(err)
	}
}

// A site with another project's certificate, or with another site's
// certificate, is refused with the reason; a server impostor is caught by
// the site.
func TestRegistrarRefusals(t *testing.T) {
	p, other := celltest.NewPKI(t), celltest.NewPKI(t)
	r := registrar(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stray := identity(t, other, "site-1")
	stray.Root = p.Root
	if _, err := Register(ctx, connect(t, r, "site-1"), stray, ""); err == nil || !strings.Contains(err.Error(), "its certificate is not from this") {
		t.Errorf("another project's site: %v", err)
	}
	// site-2 shows site-1's certificate (and key) but calls itself site-2.
	id1 := identity(t, p, "site-1")
	thief := *id1
	thief.Name = "site-2"
	if _, err := Register(ctx, connect(t, r, "site-2"), &thief, ""); err == nil || !strings.Contains(err.Error(), "signs as") && !strings.Contains(err.Error(), "issued to") {
		t.Errorf("another site's certificate: %v", err)
	}
	// The site checks the server: one with another root's certificate.
	impostor := registrar(t, other)
	if _, err := Register(ctx, connect(t, impostor, "site-1"), id1, ""); !errors.Is(err, ErrIdentity) {
		t.Errorf("an impostor server: %v", err)
	}
	// A register without a payload is refused.
	if _, err := r.checkRegistration(nil, "site-1", "regular", "site-1", nil); err == nil {
		t.Error("a register without payload was taken")
	}
}

// Many sites register at once.
func TestRegistrarManySites(t *testing.T) {
	p := celltest.NewPKI(t)
	r := registrar(t, p)
	const n = 16
	ids := make([]*Identity, n)
	for i := range ids {
		ids[i] = identity(t, p, "site-"+string(rune('a'+i)))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	errs := make(chan error, n)
	for _, id := range ids {
		go func() { _, err := Register(ctx, connect(t, r, id.Name), id, ""); errs <- err }()
	}
	for range ids {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if len(r.Sites()) != n {
		t.Fatalf("%d sites", len(r.Sites()))
	}
}

// Before it registers, a site's other requests are refused.
func TestRegistrarGate(t *testing.T) {
	p := celltest.NewPKI(t)
	r := registrar(t, p)
	id := identity(t, p, "site-1")
	site := connect(t, r, "site-1")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := Heartbeat(ctx, site, id, nil); err == nil || !strings.Contains(err.Error(), "unauthenticated") {
		t.Fatalf("a heartbeat before registering: %v", err)
	}
	if _, err := Register(ctx, site, id, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := Heartbeat(ctx, site, id, nil); err != nil {
		t.Fatal(err)
	}
}

// Challenges for a site's name from another connection, without end, do
// not keep the site from registering: a challenge's nonce belongs to its
// connection.
func TestChallengesFromElsewhereDoNotBlockRegistration(t *testing.T) {
	p := celltest.NewPKI(t)
	r := registrar(t, p)
	id := identity(t, p, "site-1")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	attacker := connect(t, r, "site-1")
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			attacker.Request(ctx, "server", "task", "challenge", msgpk.Map{{Key: "cn", Value: "site-1"}, {Key: "nonce", Value: "x"}}, nil, cell.EncodingNone)
		}
	}()
	for i := 0; i < 5; i++ {
		if _, err := Register(ctx, connect(t, r, "site-1"), id, ""); err != nil {
			t.Fatalf("registration %d while another connection challenges for the name: %v", i, err)
		}
	}
	close(stop)
	<-done
}
