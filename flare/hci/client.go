package hci

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"
)

// Reply is a server's answer to one command.
type Reply struct {
	Items []Item
}

// Err is the reply's first error item, if any.
func (r *Reply) Err() error {
	for _, it := range r.Items {
		if it.Type == TypeError {
			return &ServerError{Msg: it.Text()}
		}
	}
	return nil
}

// Strings are the texts of the reply's string items.
func (r *Reply) Strings() []string {
	var out []string
	for _, it := range r.Items {
		if it.Type == TypeString {
			out = append(out, it.Text())
		}
	}
	return out
}

// ServerError is an error item of a reply.
type ServerError struct{ Msg string }

func (e *ServerError) Error() string { return "server: " + e.Msg }

// Client sends commands to an admin server, one connection each, as
// NVFlare's AdminAPI does.
type Client struct {
	Addr string
	// TLS, if set, must carry the admin's client certificate and the
	// project's root CA.
	TLS *tls.Config
	// Timeout bounds one command, reply included (default 10 min: the
	// server waits for the clients' replies).
	Timeout time.Duration
	// MaxReply bounds a reply (default 64 MiB).
	MaxReply int64
	// Token is the session token from Login or CertLogin.
	Token string
}

// Do sends one command line and reads the reply. The reply may hold
// error items: see Reply.Err.
func (c *Client) Do(command string) (*Reply, error) {
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Minute
	}
	d := &net.Dialer{Timeout: 30 * time.Second}
	var nc net.Conn
	var err error
	if c.TLS != nil {
		nc, err = tls.DialWithDialer(d, "tcp", c.Addr, c.TLS)
	} else {
		nc, err = d.Dial("tcp", c.Addr)
	}
	if err != nil {
		return nil, fmt.Errorf("admin server %s: %w", c.Addr, err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(timeout))
	req := &Message{Data: []Item{TextItem(TypeCommand, command)}}
	if c.Token != "" {
		req.Data = append(req.Data, TextItem(TypeToken, c.Token))
	}
	// The server may refuse a request before it has read all of it (one
	// too large): the reply is read while the request is being written,
	// and a reply beats the error of the unfinished write.
	wrote := make(chan error, 1)
	go func() { wrote <- WriteTransmission(nc, req) }()
	limit := c.MaxReply
	if limit <= 0 {
		limit = 64 << 20
	}
	msgs, err := ReadReply(nc, limit)
	if err != nil {
		// A write that failed before the read did says why the reply was
		// cut (the server went away mid-request); one still going fails
		// only because of the Close, and would hide the read's reason
		// (a reply too large, a protocol error).
		select {
		case werr := <-wrote:
			if werr != nil {
				err = fmt.Errorf("sending the request: %w; reading the reply: %w", werr, err)
			}
		default:
			nc.Close()
			<-wrote
		}
		return nil, fmt.Errorf("admin server %s: %w", c.Addr, err)
	}
	r := &Reply{}
	for _, m := range msgs {
		r.Items = append(r.Items, m.Data...)
	}
	return r, nil
}

// ErrRejected is a refused login.
var ErrRejected = errors.New("login refused: wrong user name, password or certificate")

// Login logs in with a password (NVFlare's POC mode).
func (c *Client) Login(user, password string) error {
	return c.login(JoinArgs([]string{"_login", user, password}))
}

// CertLogin logs in as the user named by the client certificate.
func (c *Client) CertLogin(user string) error {
	return c.login(JoinArgs([]string{"_cert_login", user}))
}

func (c *Client) login(cmd string) error {
	c.Token = ""
	r, err := c.Do(cmd)
	if err != nil {
		return err
	}
	if err := r.Err(); err != nil {
		return err
	}
	ok := false
	for _, it := range r.Items {
		switch it.Type {
		case TypeString:
			ok = it.Text() == "OK"
		case TypeToken:
			c.Token = it.Text()
		}
	}
	if !ok {
		return ErrRejected
	}
	return nil
}
