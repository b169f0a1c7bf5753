package register

import (
	"context"
	"crypto/rsa"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/flarego/flarego/flare/cellnet/cell"
	"github.com/flarego/flarego/flare/internal/celltest"
)

func TestRegister(t *testing.T) {
	p := celltest.NewPKI(t)
	serverCert, serverKey := p.Leaf(t, "server1")
	siteCert, siteKey := p.Leaf(t, "site-1")
	id := &Identity{Name: "site-1", Project: "proj", CertPEM: siteCert, Key: siteKey, Root: p.Root, ServerIdentity: "server1"}
	run := func(id *Identity, cn string, cert []byte, key *rsa.PrivateKey) (*cell.Auth, error) {
		a, b := cell.Pipe()
		site, srv := cell.New(a, "site-1"), cell.New(b, "server")
		defer site.Close()
		celltest.FakeRegistrar(t, srv, p, cn, cert, key)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return Register(ctx, site, id, "127.0.0.1")
	}
	a, err := run(id, "server1", serverCert, serverKey)
	if err != nil || a.Token == "" || a.SSID != "NA" {
		t.Fatalf("register: %+v %v", a, err)
	}

	// A server of another project (another root), an impostor's name,
	// a signature by a key that is not the certificate's: refused, saying why.
	other := celltest.NewPKI(t)
	otherCert, otherKey := other.Leaf(t, "server1")
	_, wrongKey := p.Leaf(t, "server1")
	for name, c := range map[string]struct {
		cn   string
		cert []byte
		key  *rsa.PrivateKey
		want string
	}{
		"other root CA": {"server1", otherCert, otherKey, "not from this project's root CA"},
		"other name":    {"server2", serverCert, serverKey, "the kit expects"},
		"other key":     {"server1", serverCert, wrongKey, "bad signature on the challenge"},
	} {
		_, err := run(id, c.cn, c.cert, c.key)
		if !errors.Is(err, ErrIdentity) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v", name, err)
		}
	}
	// A site whose certificate is not from the project is refused by the server.
	strayCert, strayKey := other.Leaf(t, "site-1")
	stray := *id
	stray.CertPEM, stray.Key = strayCert, strayKey
	if _, err := run(&stray, "server1", serverCert, serverKey); !errors.Is(err, cell.ErrReply) || !strings.Contains(err.Error(), cell.RCAuthentication) {
		t.Errorf("stray site: %v", err)
	}
}
