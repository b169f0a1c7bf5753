package wire20

import (
	"errors"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flarego/flarego/flare"
)

// gRPC's codes become the kinds the client runtime acts on: Unavailable
// (what the server's gate answers a client over its per-token share, and
// what a server that is away gives) and DeadlineExceeded are retried,
// Unauthenticated means register again; ResourceExhausted, which the gate
// once answered, ends the client.
func TestCallErrorKinds(t *testing.T) {
	for code, want := range map[codes.Code]flare.CallErrorKind{codes.Unavailable: flare.Unavailable,
		codes.DeadlineExceeded: flare.TimedOut, codes.Canceled: flare.Canceled, codes.Unauthenticated: flare.UnknownToken,
		codes.ResourceExhausted: flare.Refused, codes.InvalidArgument: flare.Refused} {
		err := callError(status.Error(code, "why"))
		if got := flare.CallKind(err); got != want {
			t.Errorf("%v: kind %d, want %d", code, got, want)
		}
		if flare.CallReason(err) != "why" || status.Code(err) != code {
			t.Errorf("%v: reason %q, code %v", code, flare.CallReason(err), status.Code(err))
		}
	}
	if err := callError(errors.New("plain")); flare.CallKind(err) != flare.Refused {
		t.Error("a plain error is not final")
	}
}
