//go:build !(goexperiment.simd && amd64)

package model

// Without GOEXPERIMENT=simd the matrix products are the portable loops;
// gemm_simd.go has the AVX-512 ones.

func sgemmNN(m, n, k int, a, b, c []float32) { sgemmNNGeneric(m, n, k, a, b, c) }

func sgemmNT(m, n, k int, a, b, c []float32) { sgemmNTGeneric(m, n, k, a, b, c) }
