// The AVX-512 micro-kernel behind packed_gemm (see packed_gemm.h for the contract).
//
// The kernel functions carry a target attribute instead of the whole file being built with
// -mavx512f, so the extension still loads and runs (on gemm_rm) on CPUs without AVX-512;
// packed_gemm_available() decides at run time.
#include "packed_gemm.h"

#include <algorithm>
#include <cstdlib>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace fastrnn {
namespace cpu {
namespace {

// dst[0:n] = src[0:n] for a compile-time n: inlined vector moves. std::copy of a run-time
// length calls memmove, which for the 32-byte rows of pack_row_blocks cost ~7% of an LSTM
// backward at H=128 (one call per 8 floats).
template <int64_t n>
inline void copy_fixed(const float* __restrict__ src, float* __restrict__ dst) {
  for (int64_t j = 0; j < n; ++j) dst[j] = src[j];
}

#if defined(__x86_64__)
// GCC 12 warns that the shuffle intrinsics' internal "undefined" vector may be used
// uninitialized (GCC bug 105593, fixed in GCC 13); every lane they return is defined.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// Transposes 16 rows of 16 floats in registers: row[i] lane j becomes row[j] lane i.
[[gnu::target("avx512f")]] inline void transpose16(__m512 row[16]) {
  // Per 128-bit lane L, t[2i] and t[2i+1] interleave rows 2i and 2i+1; then u[4r + c]
  // holds column 4L + c of rows 4r..4r+3 in lane L.
  __m512 t[16], u[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(row[i], row[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(row[i], row[i + 1]);
  }
  for (int r = 0; r < 16; r += 4) {
    u[r] = _mm512_shuffle_ps(t[r], t[r + 2], _MM_SHUFFLE(1, 0, 1, 0));
    u[r + 1] = _mm512_shuffle_ps(t[r], t[r + 2], _MM_SHUFFLE(3, 2, 3, 2));
    u[r + 2] = _mm512_shuffle_ps(t[r + 1], t[r + 3], _MM_SHUFFLE(1, 0, 1, 0));
    u[r + 3] = _mm512_shuffle_ps(t[r + 1], t[r + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  // Gathers lane L of u[c], u[4 + c], u[8 + c], u[12 + c] into column 4L + c.
  for (int c = 0; c < 4; ++c) {
    const __m512 even_lo = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x88);
    const __m512 odd_lo = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xdd);
    const __m512 even_hi = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x88);
    const __m512 odd_hi = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xdd);
    row[c] = _mm512_shuffle_f32x4(even_lo, even_hi, 0x88);
    row[8 + c] = _mm512_shuffle_f32x4(even_lo, even_hi, 0xdd);
    row[4 + c] = _mm512_shuffle_f32x4(odd_lo, odd_hi, 0x88);
    row[12 + c] = _mm512_shuffle_f32x4(odd_lo, odd_hi, 0xdd);
  }
}

// kStrip columns of a transposed source into their panel: dst[p * kPanel + j] =
// bt[j * ld + p], j < kStrip, p < k. Element by element this is one store per float into
// a column of the panel: 17-20% of a GRU or LSTM cell step's forward at B=64, H=128, which
// packs W_ih and W_hh on every call (perf, one thread). 16x16 blocks transposed in
// registers store whole rows of the strip instead.
[[gnu::target("avx512f")]] void pack_strip_avx512(int64_t k, const float* bt, int64_t ld,
                                                  float* dst) {
  for (int64_t p0 = 0; p0 < k; p0 += 16) {
    const int64_t depth = std::min<int64_t>(16, k - p0);
    const __mmask16 valid = static_cast<__mmask16>((uint32_t(1) << depth) - 1);
    __m512 rows[16];
    for (int i = 0; i < 16; ++i) rows[i] = _mm512_maskz_loadu_ps(valid, bt + i * ld + p0);
    transpose16(rows);
    for (int64_t p = 0; p < depth; ++p) _mm512_storeu_ps(dst + (p0 + p) * kPanel, rows[p]);
  }
}
#pragma GCC diagnostic pop
#endif

}  // namespace

void pack_panels(int64_t k, int64_t n, const float* b, int64_t row_stride, int64_t col_stride,
                 float* out) {
  for (int64_t j0 = 0; j0 < n; j0 += kPanel) {
    const int64_t w = std::min(kPanel, n - j0);
    float* panel = out + j0 * k;
    if (w < kPanel)
      std::fill(panel, panel + k * kPanel, 0.0f);
    if (col_stride == 1 && w == kPanel) {  // whole rows of a row-major matrix
      for (int64_t p = 0; p < k; ++p)
        copy_fixed<kPanel>(b + p * row_stride + j0, panel + p * kPanel);
    } else {
      for (int64_t p = 0; p < k; ++p) {
        const float* src = b + p * row_stride + j0 * col_stride;
        for (int64_t j = 0; j < w; ++j) panel[p * kPanel + j] = src[j * col_stride];
      }
    }
  }
}

void pack_row_blocks(int64_t m, int64_t K, int64_t p0, int64_t p1, const float* at,
                     int64_t ld, float* out) {
  for (int64_t i0 = 0; i0 < m; i0 += kBlockRows) {
    const int64_t rows = std::min(kBlockRows, m - i0);
    float* block = out + i0 * K;
    if (rows == kBlockRows) {
      for (int64_t p = p0; p < p1; ++p)
        copy_fixed<kBlockRows>(at + p * ld + i0, block + p * kBlockRows);
    } else {
      for (int64_t p = p0; p < p1; ++p)
        std::copy(at + p * ld + i0, at + p * ld + i0 + rows, block + p * kBlockRows);
    }
  }
}

#if defined(__x86_64__)

namespace {

// kBlockRows x 2 vectors = 16 accumulators: enough independent FMA chains to hide their
// latency, with each B vector reused 8 times from a register. Wider tiles (12x32, 6x64,
// 8x48) measured no faster on Zen4.
constexpr int kRows = static_cast<int>(kBlockRows);
// Depth of one pass over the panels. A slice [kDepth, kPanel] of a panel is 16 KiB: it
// stays in L1 (32 KiB on Zen4, 48 KiB on the Intel machine kind) while the row blocks of a
// tile pass over it, and the tile's A slice stays in L2. On the Intel kind (one thread,
// separate processes alternated, medians of 5): with 512 (64 KiB slices, read from L2 by
// every row block) the H=512 LSTM forward+backward took 592-627 ms and the GRU's 476-485,
// with 256 575-585 and 458-470; 128 measured the same as 256 at H=512 and 1-4% faster on
// the LSTM forward+backward at H=128 (44.1-45.0 ms against 45.4-46.1).
constexpr int64_t kDepth = 128;

// Floats per cache line: a panel row (kPanel floats) is two lines.
constexpr int64_t kLineFloats = 16;

// Rows of a partial row block that go through one micro-kernel call for two panels at once.
// On one panel, up to 4 rows make at most 8 accumulators: too few FMA chains to hide the
// FMA latency (4 cycles on the Intel machine kind, 2 issued per cycle). A 64-column product
// at depth 128 (one thread, B in L1) took 326, 328, 437, 430 ns for 1-4 rows a panel at a
// time (757 for 8 rows), 173, 233, 300, 389 ns with both panels in one call.
constexpr int kPairedRows = 4;

// C[R, 32 * P] = init + A[R, k] @ [panel 0 | .. | panel P-1][k, 32 * P] (panel q at
// b + q * panel_stride; each 16-column vector v of C masked by masks[v]); meanwhile
// prefetches into L2 the first min(pf_lines, k) cache lines from pf, one per step of p.
// The same multiply-adds in the same order for every element whatever R and P.
template <int R, int P>
[[gnu::target("avx512f")]] void micro_kernel(int64_t k, const float* a, int64_t row_stride,
                                             int64_t k_stride, const float* b,
                                             int64_t panel_stride, const float* init,
                                             int64_t init_ld, float* c, int64_t ldc,
                                             const __mmask16* masks, const float* pf,
                                             int64_t pf_lines) {
  constexpr int V = 2 * P;  // vectors of 16 columns
  // The loops are unrolled by hand (pragma): left to GCC, it kept the accumulators in a
  // stack array and copied them in and out of registers around the p loop, which cost ~6%
  // of the kernel's throughput at k = 128 (the recurrence's depth at H = 128).
  __m512 acc[R][V];
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v)
      acc[i][v] = init ? _mm512_maskz_loadu_ps(masks[v], init + i * init_ld + 16 * v)
                       : _mm512_setzero_ps();
  for (int64_t p = 0; p < k; ++p, a += k_stride, b += kPanel) {
    __m512 bv[V];
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) {
      bv[v] = _mm512_loadu_ps(b + v / 2 * panel_stride + v % 2 * 16);
      // In a register: left to GCC, small R read B from memory in every FMA instead, one
      // load per multiply-add.
      asm("" : "+v"(bv[v]));
    }
    if (p < pf_lines)
      _mm_prefetch(reinterpret_cast<const char*>(pf + p * kLineFloats), _MM_HINT_T1);
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
      const __m512 ai = _mm512_set1_ps(a[i * row_stride]);
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) acc[i][v] = _mm512_fmadd_ps(ai, bv[v], acc[i][v]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) _mm512_mask_storeu_ps(c + i * ldc + 16 * v, masks[v], acc[i][v]);
}

using MicroKernel = void (*)(int64_t, const float*, int64_t, int64_t, const float*, int64_t,
                             const float*, int64_t, float*, int64_t, const __mmask16*,
                             const float*, int64_t);
// By rows: one panel, or (up to kPairedRows rows) two panels.
constexpr MicroKernel kOnePanel[kRows + 1] = {
    nullptr,             micro_kernel<1, 1>, micro_kernel<2, 1>, micro_kernel<3, 1>,
    micro_kernel<4, 1>, micro_kernel<5, 1>, micro_kernel<6, 1>, micro_kernel<7, 1>,
    micro_kernel<8, 1>};
constexpr MicroKernel kTwoPanels[kPairedRows + 1] = {
    nullptr, micro_kernel<1, 2>, micro_kernel<2, 2>, micro_kernel<3, 2>, micro_kernel<4, 2>};

// Lanes of a 16-float half of a panel that hold one of the w valid columns (from `from`).
__mmask16 column_mask(int64_t w, int64_t from) {
  const int64_t lanes = std::clamp<int64_t>(w - from, 0, 16);
  return static_cast<__mmask16>((uint32_t(1) << lanes) - 1);
}

[[gnu::target("avx512f")]] void packed_gemm_avx512(int64_t m, int64_t n, int64_t k,
                                                   AOperand a, const float* bp,
                                                   const float* init, int64_t init_ld,
                                                   float* c, int64_t ldc) {
  const int64_t blocks = std::max<int64_t>(1, (m + kRows - 1) / kRows);
  const int64_t partial_row0 = m / kRows * kRows;
  const int partial_rows = static_cast<int>(m - partial_row0);
  // One pass even when k == 0, so C still receives init.
  for (int64_t p0 = 0; p0 == 0 || p0 < k; p0 += kDepth) {
    const int64_t kc = std::min(kDepth, k - p0);
    // Later passes continue the sums already in C.
    const float* in = p0 == 0 ? init : c;
    const int64_t in_ld = p0 == 0 ? init_ld : ldc;
    __mmask16 masks[4] = {};  // this panel's two vectors, after the previous panel's two
    for (int64_t j = 0; j < n; j += kPanel) {
      masks[0] = masks[2];
      masks[1] = masks[3];
      masks[2] = column_mask(n - j, 0);
      masks[3] = column_mask(n - j, 16);
      const float* b = bp + j * k + p0 * kPanel;
      // The slice the next iteration reads (the next panel, or the first panel's next
      // depth range), prefetched by the row blocks in equal shares. B operands larger
      // than L2 (W_hh at H=512: 4 MiB) come from L3 once per call or time step; left to
      // the hardware, that stream arrived during the first row block's pass over each
      // slice, and an H=512 step product ran at ~137 GFLOP/s against ~150 with the
      // stream spread out (one thread, 8 blocks of [512, 256] in turn).
      const bool last_panel = j + kPanel >= n;
      const int64_t next_kc = last_panel ? std::min(kDepth, k - p0 - kDepth) : kc;
      const int64_t lines = std::max<int64_t>(next_kc, 0) * (kPanel / kLineFloats);
      const float* next = lines == 0 ? nullptr
                          : last_panel ? bp + (p0 + kDepth) * kPanel : b + k * kPanel;
      const int64_t share = (lines + blocks - 1) / blocks;
      auto run = [&](MicroKernel kernel, int64_t i, int64_t panels) {
        const int64_t j0 = j - (panels - 1) * kPanel;
        const int64_t first = i / kRows * share;
        const int64_t count = std::clamp<int64_t>(lines - first, 0, share);
        kernel(kc, a.from_row(i).data + p0 * a.k_stride, a.row_stride, a.k_stride,
               b - (panels - 1) * k * kPanel, k * kPanel, in ? in + i * in_ld + j0 : nullptr,
               in_ld, c + i * ldc + j0, ldc, masks + 4 - 2 * panels,
               count > 0 ? next + first * kLineFloats : nullptr, count);
      };
      for (int64_t i = 0; i < partial_row0; i += kRows) run(kOnePanel[kRows], i, 1);
      if (partial_rows > kPairedRows) {
        run(kOnePanel[partial_rows], partial_row0, 1);
      } else if (partial_rows > 0 && (j / kPanel % 2 == 1 || last_panel)) {
        // With the even panel before it when this one is odd (that panel's call waited
        // for this one); the even panel's share of the prefetch, aimed at this panel's
        // slice, which its row blocks have read by now, is left out.
        const int64_t panels = 1 + j / kPanel % 2;
        run(panels == 2 ? kTwoPanels[partial_rows] : kOnePanel[partial_rows], partial_row0,
            panels);
      }
    }
  }
}

}  // namespace

bool packed_gemm_available() {
  // FASTRNN_NO_AVX512=1 forces the portable path, so that a machine with AVX-512 (CI's)
  // can test it too. Read once, at the first call.
  static const bool available = __builtin_cpu_supports("avx512f") &&
                                std::getenv("FASTRNN_NO_AVX512") == nullptr;
  return available;
}

void packed_gemm(int64_t m, int64_t n, int64_t k, AOperand a, const float* bp,
                 const float* init, int64_t init_ld, float* c, int64_t ldc) {
  packed_gemm_avx512(m, n, k, a, bp, init, init_ld, c, ldc);
}

void pack_transposed_strip(int64_t k, const float* bt, int64_t ld, int64_t j0, float* out) {
  pack_strip_avx512(k, bt, ld, out + j0 / kPanel * k * kPanel + j0 % kPanel);
}

// The GCC 12 warning of transpose16 again (_mm512_insertf64x4).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
[[gnu::target("avx512f")]] void pack_row_blocks_streamed(int64_t m, int64_t K, int64_t p0,
                                                         int64_t p1, const float* at,
                                                         int64_t ld, float* out) {
  for (int64_t i0 = 0; i0 < m; i0 += kBlockRows) {
    float* block = out + i0 * K;
    int64_t p = p0;
    // Two depths of a block fill one 64-byte line: whole aligned lines are streamed. A
    // block that is not 32-byte aligned has none; one that is starts one on the first or
    // the second depth.
    const uintptr_t misaligned = reinterpret_cast<uintptr_t>(block + p * kBlockRows) % 64;
    const int64_t first_line = misaligned == 0 ? p : misaligned == 32 ? p + 1 : p1;
    for (; p < std::min(first_line, p1); ++p)
      copy_fixed<kBlockRows>(at + p * ld + i0, block + p * kBlockRows);
    for (; p + 2 <= p1; p += 2) {
      const __m256 first = _mm256_loadu_ps(at + p * ld + i0);
      const __m256 second = _mm256_loadu_ps(at + (p + 1) * ld + i0);
      const __m512d line = _mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(first)),
                                              _mm256_castps_pd(second), 1);
      _mm512_stream_ps(block + p * kBlockRows, _mm512_castpd_ps(line));
    }
    if (p < p1) copy_fixed<kBlockRows>(at + p * ld + i0, block + p * kBlockRows);
  }
  _mm_sfence();
}
#pragma GCC diagnostic pop

#else  // no AVX-512 kernel for this architecture: callers stay on gemm_rm

bool packed_gemm_available() { return false; }

void packed_gemm(int64_t, int64_t, int64_t, AOperand, const float*, const float*, int64_t,
                 float*, int64_t) {
  std::abort();  // unreachable: guarded by packed_gemm_available()
}

void pack_transposed_strip(int64_t, const float*, int64_t, int64_t, float*) {
  std::abort();  // unreachable: guarded by packed_gemm_available()
}

void pack_row_blocks_streamed(int64_t, int64_t, int64_t, int64_t, const float*, int64_t,
                              float*) {
  std::abort();  // unreachable: guarded by packed_gemm_available()
}

#endif

}  // namespace cpu
}  // namespace fastrnn
