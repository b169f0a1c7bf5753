package wire20

import (
	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/proto/admin"
)

// NewAdminMessage is a server → client request as NVFlare's admin sends it
// (flare.NewAdminRequest as a message).
func NewAdminMessage(topic, run string, body []byte, headers ...string) *admin.Message {
	return AdminMessage(flare.NewAdminRequest(topic, run, body, headers...))
}

// AdminMessage is an admin request as the admin channel carries it: a
// body as "bytes", none as an empty "str". The message shares the
// request's headers and body.
func AdminMessage(r *flare.AdminRequest) *admin.Message {
	m := &admin.Message{Id: r.ID, Topic: r.Topic, BodyType: "str", Headers: r.Headers}
	if r.Body != nil {
		m.BodyType, m.Body = "bytes", r.Body
	}
	return m
}
