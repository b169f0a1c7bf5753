// Package model will hold the pneumonia CNN: the architecture as data
// (encrypted at rest like the seed's network.py), its Gorgonia implementation
// with PyTorch semantics, training, inference and the image pipeline.
//
// It is not built yet; the persistor's StateDict is the seam it will use.
package model
