// Package layout holds no code: its test checks the import direction of
// the module's packages (../shared/spec/product.md's contract), reading
// `go list -deps`:
//
//   - persistor, fcp and proto import nothing of ours above them;
//   - model imports persistor (and fcp), never flare;
//   - flare and its sub-packages never import model;
//   - the runtimes (flare/client, flare/server) never import a
//     particular wire (flare/wire20, flare/cellnet/...), and neither they
//     nor package flare depend on gRPC at all;
//   - the seed job's package (pneumonia) never imports a runtime or a wire.
package layout
