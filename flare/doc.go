// Package flare holds the NVFlare concepts that every wire generation and
// both runtimes share: the [Shareable], [DXO] and [FLContext] that travel
// between server and clients, the return codes and special task names, the
// job configuration ([LoadJob]: config_fed_server.json and
// config_fed_client.json, with --set overrides), the startup kits
// ([LoadStartupKit]: fed_server.json, fed_client.json and their TLS files),
// the [Registry] that maps NVFlare component paths to Go components, and
// apps as zip archives ([ZipApp], [UnzipApp], [PlaintextCode]).
//
// The data path reads top to bottom through its sub-packages: a job folder
// (here) → the client runtime (flare/client), which runs an [Executor] on
// each task → a DXO in a Shareable → the wire (flare/wire20: NVFlare 2.0's
// gRPC with pickles) → the server runtime (flare/server: ScatterAndGather,
// the weighted aggregator, CrossSiteModelEval, the admin console) → a
// [ModelPersistor] → the output folder. flare/hci is NVFlare 2.0's admin
// console protocol.
//
// What a peer sends is untrusted: names pass [CheckName] or [CheckPathName]
// before they go into a table, a log line ([LogSafe]) or a path, and an app
// is unpacked with limits on its size, its file count and where its files
// may go.
package flare
