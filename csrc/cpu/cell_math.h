// Scalar math shared by the CPU cells: activations and a small row-major GEMM.
//
// Everything here is written so that results depend only on the shapes of a call, never
// on the thread count: callers split work into fixed tiles (see packed_steps.h), and each
// tile is computed by one thread with a fixed summation order.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

// The Fortran BLAS that libtorch_cpu exports (MKL in the x86 wheels). ATen's
// at::native::cpublas::gemm(float/double) wrappers are not exported to extensions.
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc);
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b,
            const int* ldb, const double* beta, double* c, const int* ldc);
}

namespace fastrnn {
namespace cpu {

// Column-major BLAS gemm: C[m,n] = alpha op(A) op(B) + beta C.
inline void blas_gemm(char ta, char tb, int m, int n, int k, float alpha, const float* a,
                      int lda, const float* b, int ldb, float beta, float* c, int ldc) {
  sgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}
inline void blas_gemm(char ta, char tb, int m, int n, int k, double alpha, const double* a,
                      int lda, const double* b, int ldb, double beta, double* c, int ldc) {
  dgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}

// ---------------------------------------------------------------------------------------
// Activations. float uses a branch-free exp (Cephes polynomial, ~1 ulp) that GCC
// vectorises inside the gate loops; libm's expf/tanhf are scalar calls and would cost more
// than the GEMM at large H. double keeps libm: it is the precision reference path.
// NaN propagates through every function (comparisons with NaN are false, so the clamps
// leave it alone).

inline float exp_fast(float x) {
  x = x > 88.3f ? 88.3f : x;
  x = x < -87.3f ? -87.3f : x;
  // Round x*log2(e) to nearest with the 1.5*2^23 trick: two adds, vectorisable without
  // SSE4.1's roundps.
  const float shifter = 12582912.0f;
  float n = (x * 1.44269504088896341f + shifter) - shifter;
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

inline float sigmoid(float x) { return 1.0f / (1.0f + exp_fast(-x)); }
inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
// 1 - 2/(e^{2x}+1) saturates cleanly to +-1; its absolute error near 0 is ~1e-7.
inline float tanh_(float x) { return 1.0f - 2.0f / (exp_fast(2.0f * x) + 1.0f); }
inline double tanh_(double x) { return std::tanh(x); }
template <typename T>
inline T relu_(T x) { return x < T(0) ? T(0) : x; }

// ---------------------------------------------------------------------------------------
// Register-blocked loop GEMM for the tiny products (the sine-wave shape: m=1, n=48, k=16),
// where a BLAS call costs more than the arithmetic. C[i, j:j+W] stays in registers while
// p runs, so every element is a plain sum over p in order: the result depends on the
// shapes only. GCC vector extensions: 32-byte vectors (AVX2 here, split elsewhere).
// (A typedef per type: GCC drops vector_size from an alias template.)
template <typename T>
struct VecOf;
template <>
struct VecOf<float> {
  typedef float type __attribute__((vector_size(32)));
};
template <>
struct VecOf<double> {
  typedef double type __attribute__((vector_size(32)));
};
template <typename T>
using Vec = typename VecOf<T>::type;
template <typename T>
constexpr int64_t kLanes = 32 / sizeof(T);

template <typename T>
inline Vec<T> vload(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename T>
inline void vstore(T* p, const Vec<T>& v) { std::memcpy(p, &v, sizeof(v)); }

// C[m,n] (+)= op(A)[m,k] @ B[k,n]; see gemm_rm for the arguments. W vectors per block.
template <typename T, int W>
inline void loop_gemm_block(int64_t m, int64_t j, int64_t k, bool trans_a, const T* a,
                            int64_t lda, const T* b, int64_t ldb, bool accumulate, T* c,
                            int64_t ldc) {
  constexpr int64_t L = kLanes<T>;
  for (int64_t i = 0; i < m; ++i) {
    Vec<T> acc[W];
    for (int w = 0; w < W; ++w) acc[w] = accumulate ? vload(c + i * ldc + j + w * L) : Vec<T>{};
    for (int64_t p = 0; p < k; ++p) {
      const T aip = trans_a ? a[p * lda + i] : a[i * lda + p];
      const T* bp = b + p * ldb + j;
      for (int w = 0; w < W; ++w) acc[w] += aip * vload(bp + w * L);
    }
    for (int w = 0; w < W; ++w) vstore(c + i * ldc + j + w * L, acc[w]);
  }
}

// ---------------------------------------------------------------------------------------
// C[m,n] = beta * C + op(A)[m,k] @ op(B)[k,n], all row-major with leading dimensions
// lda/ldb/ldc; op(A) = A stored [m,k], or A^T with A stored [k,m] when trans_a; likewise
// op(B) = B [k,n], or B^T with B stored [n,k] when trans_b. beta is 0 or 1.
// Products up to kLoopGemmMaxFmas run as loops (above), larger ones in BLAS; the choice
// depends on the shape only.
constexpr int64_t kLoopGemmMaxFmas = 32768;

template <typename T>
inline void gemm_rm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                    const T* a, int64_t lda, const T* b, int64_t ldb, T beta, T* c,
                    int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  if (m * n * k > kLoopGemmMaxFmas) {
    // Row-major C = A B is column-major C^T = B^T A^T: swap the operands.
    blas_gemm(trans_b ? 'T' : 'N', trans_a ? 'T' : 'N', int(n), int(m), int(k), T(1), b,
              int(ldb), a, int(lda), beta, c, int(ldc));
    return;
  }
  constexpr int64_t L = kLanes<T>;
  const bool accumulate = beta != T(0);
  int64_t j = 0;
  if (!trans_b) {
    for (; j + 4 * L <= n; j += 4 * L)
      loop_gemm_block<T, 4>(m, j, k, trans_a, a, lda, b, ldb, accumulate, c, ldc);
    for (; j + L <= n; j += L)
      loop_gemm_block<T, 1>(m, j, k, trans_a, a, lda, b, ldb, accumulate, c, ldc);
  }
  // Remaining columns (and every column of the B^T form) as dot products.
  for (int64_t i = 0; i < m; ++i)
    for (int64_t jj = j; jj < n; ++jj) {
      T acc = accumulate ? c[i * ldc + jj] : T(0);
      for (int64_t p = 0; p < k; ++p)
        acc += (trans_a ? a[p * lda + i] : a[i * lda + p]) *
               (trans_b ? b[jj * ldb + p] : b[p * ldb + jj]);
      c[i * ldc + jj] = acc;
    }
}

}  // namespace cpu
}  // namespace fastrnn
