// Package wire20 is NVFlare 2.0's wire: Shareables and FLContexts as
// Python pickles inside the protobuf messages of fedlearn.FederatedTraining
// and admin.AdminCommunicating (package proto), as NVFlare 2.0.x sends them.
//
// [DecodeShareable] and [DecodeFLContext] read a pickle through the guarded
// unpickler of persistor/pickle, which builds only NVFlare's Shareable and
// FLContext, numpy arrays and dtypes, and logging.getLogger, never anything
// else, with every declared size checked against the bytes present before
// anything is allocated; [EncodeShareable] and [EncodeFLContext] write
// pickles that Python's pickle.loads turns back into the real classes.
//
// Both sides of the gRPC binding are here. [Wire] is the client's (a
// flare.ClientWire, client.go). [ServerWire] is the server's (a
// flare.ServerWire, server.go): it serves both services on one listener
// and turns each call into one of the runtime's flare.ServerHandler; a
// round's task is encoded once and shared by every client (taskcodec.go
// writes it without copying). What it promises against peers it cannot
// trust: calls wait at a gate with bounded pools and a token is checked
// before a call takes a slot (gate.go); every request is held to its own
// size limit, a result to what the handler's current model can hold,
// before it is decompressed or decoded, and a connection may only send
// what its admitted calls may carry (limits.go, taskcodec.go).
//
// It also holds the facts of the binding both sides need: the method
// names, the token metadata header ([TokenHeader], [TokenFromMetadata]),
// the message limit, and the admin channel's messages ([NewAdminMessage],
// [AdminMessage]).
package wire20
