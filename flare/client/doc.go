// Package client is the FL client runtime: a [Client] registers with the
// server, keeps its registration alive, and runs the tasks the server hands
// out with its flare.Executors until the run ends ([Client.Run]); with
// [Client.RunAdmin] it also follows the admin channel as NVFlare 2.0's
// client does: it takes the run number, deploys the app into its workspace
// (checked: no path leaves it, sizes are bounded), starts and aborts it, and
// reports its status, until the server shuts it down.
//
// A server that is away or busy is retried with backoff and logged; a
// server that forgets the client's token gets a new registration. A task's
// error goes back to the server as its return code, with the reason.
package client
