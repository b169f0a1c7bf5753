package site

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/flarego/flarego/flare/cellnet/cell"
	"github.com/flarego/flarego/flare/cellnet/conn"
	"github.com/flarego/flarego/flare/cellnet/register"
	"github.com/flarego/flarego/flare/internal/celltest"
	"github.com/flarego/flarego/flare/internal/flaretest"
)

// tlsServer is a CellNet server on loopback with mutual TLS: its
// certificate from serverPKI, clients' from clientRoot; it registers sites.
func tlsServer(t *testing.T, serverPKI, clientPKI *celltest.PKI) string {
	certPEM, key := serverPKI.Leaf(t, "server1", "localhost")
	pair, err := tls.X509KeyPair(certPEM, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(clientPKI.Root)
	creds := credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{pair}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12})
	g := grpc.NewServer(append(conn.ServerOptions(), grpc.Creds(creds))...)
	r := &register.Registrar{Name: "server1", CertPEM: certPEM, Key: key, Root: clientPKI.Root}
	(&conn.Server{Name: "server", Accept: func(c *conn.Conn) {
		cl := cell.New(c, "server")
		r.Serve(cl)
		<-cl.Done()
	}}).Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	_, port, _ := net.SplitHostPort(lis.Addr().String())
	return "localhost:" + port
}

// Over real gRPC and mutual TLS, a site registers with a server of its
// project; a server whose certificate is from another root is refused
// at the handshake, with an error that says so, at once.
func TestSiteMutualTLS(t *testing.T) {
	p := celltest.NewPKI(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	log := &flaretest.Log{T: t}
	s := &Site{Name: "site-1", Kit: writeKitAt(t, p, tlsServer(t, p, p), "mtls"), Logf: log.Logf, GiveUp: 5 * time.Second}
	s.Workspace = t.TempDir()
	done := make(chan error, 1)
	sctx, stop := context.WithCancel(ctx)
	go func() { done <- s.Run(sctx) }()
	waitLog(t, log, "registered with server1", 1)
	stop()
	<-done

	other := celltest.NewPKI(t)
	s2 := &Site{Name: "site-1", Kit: writeKitAt(t, p, tlsServer(t, other, p), "mtls"), Workspace: t.TempDir(), GiveUp: 5 * time.Second}
	start := time.Now()
	err := s2.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "certificates from another root?") {
		t.Fatalf("a server from another root: %v", err)
	}
	if time.Since(start) > 3*time.Second {
		t.Fatalf("the refusal took %s", time.Since(start))
	}
	t.Logf("%v", err)
}
