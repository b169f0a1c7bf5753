package wire20

import (
	"math"

	"github.com/flarego/flarego/proto/admin"
	"github.com/flarego/flarego/proto/fedlearn"
	"google.golang.org/grpc/metadata"
)

// MaxMessageBytes is NVFlare 2.0's gRPC message limit (2 GiB - 1). The
// server sends up to it; what it receives is bounded per method (limits.go).
const MaxMessageBytes = math.MaxInt32

// Full gRPC method names the server treats apart.
var (
	SubmitMethod    = "/" + fedlearn.FederatedTraining_ServiceDesc.ServiceName + "/SubmitUpdate"
	GetTaskMethod   = "/" + fedlearn.FederatedTraining_ServiceDesc.ServiceName + "/GetTask"
	RegisterMethod  = "/" + fedlearn.FederatedTraining_ServiceDesc.ServiceName + "/Register"
	SendReplyMethod = "/" + admin.AdminCommunicating_ServiceDesc.ServiceName + "/SendReply"
)

// TokenHeader is the metadata key NVFlare's secure mode puts a client's
// token in; flarego's client sends it on every call, so that the server can
// check the token before it reads the request.
const TokenHeader = "x-custom-token"

// TokenFromMetadata is the token a call carries in its metadata, or ""
// (NVFlare's client sends "None" before it has one).
func TokenFromMetadata(md metadata.MD) string {
	if v := md.Get(TokenHeader); len(v) > 0 && v[0] != "None" {
		return v[0]
	}
	return ""
}
