// Package proto holds NVFlare's gRPC protocols in sub-packages generated
// from our own .proto files: for NVFlare 2.0.x, fedlearn (the
// FederatedTraining service) and admin (the AdminCommunicating service);
// for NVFlare 2.4+, streamer (the Streamer service CellNet's frames travel
// on).
// 'make proto' regenerates them; the generated code is committed.
package proto
