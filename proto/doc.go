// Package proto will hold .proto files wire-compatible with NVFlare 2.0.x
// (fedlearn.FederatedTraining, admin.AdminCommunicating) and their generated
// Go code; 'make proto' regenerates it.
package proto
