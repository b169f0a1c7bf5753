// Package kernels holds the model's float32 loops: vector operations,
// batch-norm steps, ReLU, the two matrix products and the direct
// convolution.
//
// The entry points are
//
//   - Axpy, Dot, Sum64, SumSqDev64 and Dot2Sum64 (vectors);
//   - Relu and ReluGrad;
//   - BNNormalize, BNApply and BNBackward (batch norm, ReLU optionally fused);
//   - SgemmNN and SgemmNT (c += a·b and c += a·bᵀ, row-major);
//   - PackConv, Conv and ConvGradW (a stride-1 convolution of a padded input
//     band, bias and ReLU fused, and its weight gradient).
//
// A vector function works on as many elements as its first input slice
// has (x, d or dy); its other slices must be at least as long. An output
// may be the same slice as an input where the function says so, never a
// partly overlapping one.
//
// Each entry point has a generic version (generic.go), plain Go built on
// every platform, that defines its result. With GOEXPERIMENT=simd on amd64
// the entry points run vector code and hand what is left to the generic
// version (simd.go, avx2.go): AVX-512 over vectors of 16 where the CPU has
// it (archsimd.X86.AVX512), else AVX2 with FMA over vectors of 8; Conv and
// ConvGradW run AVX2 on both kinds of CPU. Otherwise (or on a CPU with
// neither) they are the generic version (nosimd.go). W below is the vector
// width a build and CPU run: 16, 8, or none.
//
// The generic versions round each product and each sum on their own: the
// compiler is kept from fusing a multiply and an add, so they give the same
// bits on every platform. Their order of summation is: Dot keeps four
// partial sums, element i going to sum i mod 4 (the last len mod 4 elements
// to the first), returned as (s0+s1)+(s2+s3); Sum64, SumSqDev64 and
// Dot2Sum64 add in order in float64 (Dot2Sum64 rounds each d·x to float32
// first, SumSqDev64 each x-m); SgemmNN adds the k products of each element
// of c to it in order; SgemmNT adds Dot of a row of a and a row of b; Conv
// starts each output at its bias and adds its taps' products in tap order;
// ConvGradW sums each weight's products from zero in row, then column order
// and adds the sum to the weight's gradient.
//
// ReLU: Relu(x) is x where x > 0 or x is NaN (a NaN goes through
// unchanged, as in PyTorch, where torch.relu(nan) is nan) and +0 elsewhere,
// -0 included, as Go's max(x, 0); BNNormalize, BNApply and Conv apply the
// same when relu is set. ReluGrad passes dy where y > 0 and gives 0
// elsewhere, at a NaN y too (PyTorch passes dy there; the loss is NaN
// either way).
//
// The promise between the vector paths and the generic one:
//
//   - Axpy, Relu, ReluGrad, BNNormalize, BNApply and BNBackward are
//     bit-identical: the vector code does the generic code's operations in
//     its order, a separate multiply and add where the generic code has
//     them (no fused multiply-add), so an element's result does not depend
//     on the path or on where the element falls. A NaN result is NaN on
//     both paths; its payload may differ.
//   - Dot (length < 2W), Sum64, SumSqDev64 and Dot2Sum64 (length < W),
//     SgemmNN (m < 4 or n < 2W, all of it Axpy), SgemmNT (k < W), Conv and
//     ConvGradW (outputs past the last multiple of 8 columns, channels of
//     ConvGradW past the last multiple of 4, or a width under 8) are
//     bit-identical too: no whole vector is left to the vector code.
//   - Otherwise the reductions, matrix products and convolutions agree
//     within a tolerance only. The vector code uses fused multiply-adds (one
//     rounding where the generic code has two) and adds the same terms in
//     another order: W lanes, then the lanes in order; Sum64, SumSqDev64 and
//     Dot2Sum64 in float32 lanes over blocks of 4096 added in float64;
//     SgemmNT over blocks of 512 of k added to c one after the other; Conv
//     in the generic order with each product fused into the sum; ConvGradW
//     in eight lanes over the band. Either result is within γₙ·Σ|term| of
//     the exact sum (n terms, γₙ = n·u/(1-n·u), u = 2⁻²⁴), so they are
//     within twice that of each other. A NaN or infinite result is NaN or
//     the same infinity on both paths, unless partial sums overflow: the
//     float32 lanes of the float64 reductions can reach ±Inf (sums near
//     3·10³⁸) where the generic float64 sum does not.
package kernels
