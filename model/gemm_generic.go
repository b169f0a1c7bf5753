package model

// sgemmNNGeneric adds a·b to c with plain loops: a is m×k, b is k×n, c is
// m×n, all row-major.
func sgemmNNGeneric(m, n, k int, a, b, c []float32) {
	for i := 0; i < m; i++ {
		crow := c[i*n : (i+1)*n]
		for p := 0; p < k; p++ {
			axpy(a[i*k+p], b[p*n:(p+1)*n], crow)
		}
	}
}

// sgemmNTGeneric adds a·bᵀ to c with plain loops: a is m×k, b is n×k.
func sgemmNTGeneric(m, n, k int, a, b, c []float32) {
	for i := 0; i < m; i++ {
		arow := a[i*k : (i+1)*k]
		for j := 0; j < n; j++ {
			c[i*n+j] += dot(arow, b[j*k:(j+1)*k])
		}
	}
}
