// Package celltest holds what the tests of the CellNet packages share: a
// project PKI in miniature ([PKI]) and a fake NVFlare registrar
// ([FakeRegistrar]). Only tests import it.
package celltest

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/pem"
	"math/big"
	"testing"
	"time"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/cellnet/cell"
	"github.com/flarego/flarego/flare/cellnet/fobs"
	"github.com/flarego/flarego/flare/cellnet/lobs"
	"github.com/flarego/flarego/flare/cellnet/msgpk"
	"github.com/flarego/flarego/persistor/pickle"
)

// PKI is a provisioned NVFlare project in miniature: a root CA and RSA
// leaves it signs.
type PKI struct {
	Root    *x509.Certificate
	RootKey *rsa.PrivateKey
}

// NewPKI makes a root CA.
func NewPKI(t testing.TB) *PKI {
	t.Helper()
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "root"}, IsCA: true,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := x509.ParseCertificate(der)
	return &PKI{root, key}
}

// RootPEM is the root certificate as rootCA.pem holds it.
func (p *PKI) RootPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.Root.Raw})
}

// Leaf makes a certificate for cn and its key; hosts, if any, go in its
// DNS names (a server's TLS certificate).
func (p *PKI) Leaf(t testing.TB, cn string, hosts ...string) ([]byte, *rsa.PrivateKey) {
	t.Helper()
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: cn}, DNSNames: hosts,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.Root, &key.PublicKey, p.RootKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), key
}

// LeafWithKey makes a certificate for cn on an existing key (many
// leaves without generating a key for each).
func (p *PKI) LeafWithKey(t testing.TB, cn string, key *rsa.PrivateKey) []byte {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.Root, &key.PublicKey, p.RootKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// AdminLeaf makes an admin's certificate as NVFlare provisions it: the
// user's name, org and role (in unstructuredName).
func (p *PKI) AdminLeaf(t testing.TB, cn, org, role string) ([]byte, *rsa.PrivateKey) {
	t.Helper()
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(3), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		Subject: pkix.Name{CommonName: cn, Organization: []string{org},
			ExtraNames: []pkix.AttributeTypeAndValue{{Type: asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 2}, Value: role}}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.Root, &key.PublicKey, p.RootKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), key
}

var pss = &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto, Hash: crypto.SHA256}

// SignPSS signs content as NVFlare's authenticator does (RSA-PSS, SHA-256).
func SignPSS(key *rsa.PrivateKey, content string) []byte {
	h := sha256.Sum256([]byte(content))
	sig, _ := rsa.SignPSS(rand.Reader, key, crypto.SHA256, h[:], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256})
	return sig
}

func verifyPSS(pub *rsa.PublicKey, content string, sig []byte) error {
	h := sha256.Sum256([]byte(content))
	return rsa.VerifyPSS(pub, crypto.SHA256, h[:], sig, pss)
}

func extra(s *flare.Shareable, key string) any {
	for _, it := range s.Extra {
		if it.Key == key {
			return it.Value
		}
	}
	return nil
}

// FakeRegistrar answers challenge and register on c as NVFlare 2.8's
// server does, signing as cn with key; it checks the site's certificate
// and signature against the root. It returns the tokens it hands out.
func FakeRegistrar(t testing.TB, c *cell.Cell, p *PKI, cn string, certPEM []byte, key *rsa.PrivateKey) <-chan string {
	serverNonce := flare.NewUUID()
	tokens := make(chan string, 16)
	c.Handle("task", "challenge", func(req *cell.Message) *cell.Message {
		sh := flare.NewShareable()
		sh.Extra = []pickle.Item{{Key: "nonce", Value: serverNonce}, {Key: "signature", Value: SignPSS(key, cn+req.String("nonce"))},
			{Key: "cn", Value: cn}, {Key: "cert", Value: certPEM}}
		b, _ := fobs.Encode(sh)
		return &cell.Message{Payload: b}
	})
	c.Handle("task", "register", func(req *cell.Message) *cell.Message {
		lc, err := lobs.Decode(req.Payload, lobs.V27)
		if err != nil {
			t.Error(err)
			return nil
		}
		v, err := fobs.Decode(lc, fobs.Options{})
		if err != nil {
			t.Error(err)
			return nil
		}
		s := v.(*flare.Shareable)
		block, _ := pem.Decode(extra(s, "cert").([]byte))
		cert, _ := x509.ParseCertificate(block.Bytes)
		if cert.CheckSignatureFrom(p.Root) != nil || verifyPSS(cert.PublicKey.(*rsa.PublicKey), extra(s, "cn").(string)+serverNonce, extra(s, "signature").([]byte)) != nil {
			return &cell.Message{Headers: msgpk.Map{{Key: cell.HReturnCode, Value: cell.RCAuthentication}}}
		}
		tok := flare.NewUUID()
		b, _ := msgpk.Marshal(msgpk.Map{{Key: "__token__", Value: tok},
			{Key: "__token_signature__", Value: base64.StdEncoding.EncodeToString(SignPSS(key, req.String("client_name")+tok))}, {Key: "ssid", Value: "NA"}})
		select {
		case tokens <- tok:
		default:
		}
		return &cell.Message{Payload: (&lobs.Container{Main: b}).Encode(lobs.V27)}
	})
	return tokens
}
