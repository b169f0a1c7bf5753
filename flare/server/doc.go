// Package server is the FL server runtime: [New] runs one job's
// ScatterAndGather rounds (and CrossSiteModelEval after them) and stops;
// [NewAdmin] waits for an operator's admin console ([Server.Console]) to
// upload, deploy and start apps, one run after another. [Server.Serve]
// answers clients on a listener through the server's [Server.Wire], a
// flare.ServerWire (flare/wire20's ServerWire for NVFlare 2.0's gRPC, with
// flarego's or NVFlare's clients); the wire calls the runtime through a
// flare.ServerHandler, and this package imports no wire.
//
// Here are the workflows and their run state (server.go, crosssite.go),
// the aggregator (aggregate.go), the client registry, the admin channel's
// queue (adminchan.go), the handler the wire calls (handler.go) and the
// console's commands (console.go). Results are aggregated in place,
// weighted by their NUM_STEPS, and each global model is stored through
// the job's flare.ModelPersistor. What the runtime promises against peers
// it cannot trust: names are checked, at most 1,024 clients are
// registered, a bad result is refused with a reason while the round goes
// on, and the model a result must match is handed to the wire
// (ResultModel), which holds every request to its size limit before it
// reads it. The README's Security section lists the limits.
package server
