// Package proto holds the gRPC protocol of NVFlare 2.0.x in two
// sub-packages generated from our own .proto files: fedlearn (the
// FederatedTraining service) and admin (the AdminCommunicating service).
// 'make proto' regenerates them; the generated code is committed.
package proto
