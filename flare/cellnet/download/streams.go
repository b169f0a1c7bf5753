package download

import (
	"context"
	"errors"
	"time"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/cellnet/cell"
	"github.com/flarego/flarego/flare/cellnet/fobs"
	"github.com/flarego/flarego/flare/cellnet/msgpk"
	"github.com/flarego/flarego/flare/cellnet/stream"
)

// Over is a Fetcher whose requests go as blob streams on st (Channel,
// Topic), bounded by maxBytes a decode; it gives the decoding options of
// one payload at a time (each its own downloads).
func Over(st *stream.Streamer, maxBytes int64) func(context.Context) fobs.Options {
	f := &Fetcher{Retries: 3, RequestTimeout: 10 * time.Minute, Limits: Limits{MaxBytes: maxBytes},
		Request: func(ctx context.Context, fqcn string, payload []byte) ([]byte, error) {
			r, err := st.Request(ctx, fqcn, Channel, Topic, nil, payload, cell.EncodingFOBS)
			if err != nil {
				return nil, err
			}
			return r.Payload, nil
		}}
	return f.Options
}

// ServeOn answers download requests on st from svc: a RequestError's
// code becomes the reply's return code. At most svc's MaxReplies replies
// are under way at once, over all the streamers it is served on.
func ServeOn(st *stream.Streamer, svc *Service) {
	st.HandleLimited(Channel, Topic, svc.replies, func(req *cell.Message) *cell.Message {
		b, err := svc.Handle(req.String(cell.HOrigin), req.Payload)
		if err != nil {
			code := cell.RCProcessException
			var re *RequestError
			if errors.As(err, &re) {
				code = re.Code
			}
			return &cell.Message{Headers: msgpk.Map{{Key: cell.HReturnCode, Value: code}, {Key: cell.HError, Value: flare.LogCut(err.Error())}}}
		}
		return &cell.Message{Payload: b}
	})
}
