package server

import (
	"context"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/persistor"
)

// handler is the server as its wire calls it (a flare.ServerHandler): it
// forwards each call to the server's own method, so that those are not
// part of Server's API.
type handler struct{ s *Server }

func (h handler) Register(_ context.Context, r flare.Registration) (string, error) {
	return h.s.register(r)
}

func (h handler) Heartbeat(_ context.Context, token string) error {
	_, err := h.s.client(token)
	return err
}

func (h handler) Quit(_ context.Context, token string) error {
	h.s.quit(token)
	return nil
}

func (h handler) GetTask(_ context.Context, token string) (*flare.Task, error) {
	return h.s.getTask(token)
}

func (h handler) Submit(_ context.Context, token string, result func() (*flare.Shareable, error)) (string, error) {
	return h.s.submitUpdate(token, result)
}

func (h handler) Poll(_ context.Context, token string) ([]*flare.AdminRequest, error) {
	return h.s.poll(token)
}

func (h handler) Reply(_ context.Context, token, requestID string, reply *flare.AdminReply) error {
	return h.s.reply(token, requestID, reply)
}

func (h handler) KnownToken(token string) bool { return h.s.knownToken(token) }

func (h handler) ResultModel() *persistor.StateDict { return h.s.resultModel.Load() }

func (h handler) Meta() flare.ServerMeta { return h.s.meta() }
