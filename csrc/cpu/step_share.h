// How the time steps of a recurrence are spread over the threads.
//
// Two ways, chosen once per op call (run_steps):
//   By rows: the batch rows are cut into row groups (RowGroups), and each thread carries
//     its groups through every step of the sequence in one parallel region. A row's step
//     needs only that row's earlier states (forward) or gradients (backward), so the
//     threads never wait for each other and each reads back only what it wrote. Taken when
//     W_hh fits in a core's L2 next to the rows, as every thread multiplies by all of it.
//   By units: each step is one parallel region (or more) of tiles of kRowTile rows by one
//     block of kUnitBlock hidden units (or output columns), so each thread multiplies by
//     its own blocks of W_hh, which stay in its L2 across the steps when the whole W_hh
//     does not fit there (4 MiB for an LSTM at H=512). A step's tiles read the h_{t-1}
//     rows that every thread wrote, so each step ends at a barrier.
// A StepShare is the part of one step that a call computes, so one step function serves
// both ways.
//
// By rows replaced a split by rows within each step (one parallel region per step, as by
// units): with two threads at B=64, T=100, H=128 (ad hoc, alternated processes, medians of
// 3), forward / forward+backward went from 2.02 / 6.89 to 1.65 / 5.92 ms (RNN), 5.22 /
// 18.3 to 4.62 / 16.6 (GRU), 6.96 / 21.6 to 6.34 / 19.5 (LSTM); packed, lengths 1-100:
// 1.28 / 4.01 to 0.96 / 3.31 (RNN), 3.06 / 9.54 to 2.73 / 8.16 (GRU), 4.07 / 11.6 to
// 3.68 / 9.99 (LSTM). One thread: unchanged.
//
// Determinism: every bound below depends on the shapes only, never on the thread count, as
// gemm_rm's BLAS may round differently for different row counts (packed_gemm does not).
// Results are therefore bitwise identical for any torch.get_num_threads().
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/SmallVector.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "packed_gemm.h"

namespace fastrnn {
namespace cpu {

// Batch rows per tile of a time step split by units, and of the input projection.
constexpr int64_t kRowTile = 64;
// Hidden units per tile of a time step split by units: a tile computes all G gates of its
// units, so its gate math needs nothing from other tiles. Block k of W_hh^T ([P, G*64]
// floats for H=512 is 384-512 KiB) stays in the per-core L2 across the steps.
constexpr int64_t kUnitBlock = 64;
// The steps go by rows when the packed W_hh takes at most this many bytes: half the 2 MiB
// L2 of a core on the Intel machine kind, so that all of it stays there next to the rows
// (LSTM at H=256 and RNN at H=512 measured faster by rows, the LSTM forward at H=512
// slower).
constexpr int64_t kRowSplitWeightBytes = int64_t(1) << 20;
// Below this many multiply-adds per parallel region, waking the other threads costs more
// than it saves (measured ~2 us per region on the 2-core CI machines).
constexpr int64_t kMinParallelFmas = int64_t(1) << 17;

// A layer call whose forward products total fewer multiply-adds than this runs on the
// calling thread alone (SerialIfSmall), even where single regions would be worth
// splitting: its few regions each pay ~3 us to wake the other thread (a 100k-float
// torch.mul took 10.85 us on one thread, 8.70 on two), and the other thread reads the
// weights the calling thread packed. The RNNCell step at B=64, H=128 (2.1M multiply-adds)
// took ~44 / ~145 us forward / forward+backward on one thread and ~53.5 / ~159 on two; the
// GRUCell step (6.3M) ~104-112 us forward on one and ~90 on two (ad hoc, threads
// alternated in one process).
constexpr int64_t kMinParallelCallFmas = int64_t(1) << 22;

// Whether parallel_tiles runs on the calling thread for the current call (SerialIfSmall).
inline bool& serial_call() {
  thread_local bool serial = false;
  return serial;
}

// For its scope, makes every parallel_tiles of a layer call whose forward products total
// `fmas` multiply-adds run on the calling thread when that is below kMinParallelCallFmas.
// Results do not change: tiles are computed the same whichever thread runs them.
class SerialIfSmall {
 public:
  explicit SerialIfSmall(int64_t fmas) : previous_(serial_call()) {
    serial_call() = previous_ || fmas < kMinParallelCallFmas;
  }
  ~SerialIfSmall() { serial_call() = previous_; }
  SerialIfSmall(const SerialIfSmall&) = delete;
  SerialIfSmall& operator=(const SerialIfSmall&) = delete;

 private:
  bool previous_;
};

inline int64_t div_up(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Runs f(tile) for tile in [0, ntiles); work = multiply-adds per tile, used to keep small
// steps on the calling thread.
template <class F>
inline void parallel_tiles(int64_t ntiles, int64_t work, const F& f) {
  if (ntiles == 1 || serial_call()) {
    for (int64_t i = 0; i < ntiles; ++i) f(i);
    return;
  }
  const int64_t grain = std::max<int64_t>(1, kMinParallelFmas / std::max<int64_t>(1, work));
  at::parallel_for(0, ntiles, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) f(i);
  });
}

struct Steps {
  int64_t T = 0, N = 0, S = 0;
  bool reverse = false;
  c10::SmallVector<int64_t, 128> bs, off;  // [T] rows and first row of each time step
  // Time step processed i-th (the recurrence walks i = 0..T-1).
  int64_t time(int64_t i) const { return reverse ? T - 1 - i : i; }
  // Rows of step time(i) whose previous state is row r of step time(i-1) (the rest start
  // from h0/c0): torch.nn's packed semantics for both directions.
  int64_t carried(int64_t i) const {
    return i == 0 ? 0 : std::min(bs[time(i)], bs[time(i - 1)]);
  }
};

// The row groups of the steps by rows: two per kRowTile rows or part (at most one per
// kBlockRows rows), so that they divide evenly over two threads; each a run of rows, cut
// so that the groups hold about equal numbers of active rows over the whole sequence.
// Packed input's later rows end early: at B=64, lengths 1-100, cuts on kBlockRows
// boundaries left the two groups 1402 and 1921 rows (the nearest cut), cuts on rows
// 1663 and 1660.
// No groups where the steps go by units: W_hh does not fit (weight_bytes, its packed size,
// above kRowSplitWeightBytes), or the sequence has one step (a cell's: its input
// projection, split by units, would cross between the cores; an RNNCell step at B=64,
// H=128 took ~10% longer split by rows), or the split by units would make a single tile
// (too little work to share: split by rows, the backward gate math at B=38, H=16 ran on
// two threads and the LSTM forward+backward took ~25% longer), or there would be a single
// group (N <= kBlockRows), which leaves the other threads idle: with two threads at N=8,
// T=100, H=256 (ad hoc, medians of 3) the LSTM forward / forward+backward took 7.67 /
// 15.0 ms as one group against 3.75 / 10.6 by units, the GRU's forward+backward 11.1
// against 8.46.
class RowGroups {
 public:
  // The most groups for N rows.
  static int64_t max_count(int64_t N) { return 2 * div_up(N, kRowTile); }

  RowGroups(const Steps& st, int64_t nblk, int64_t weight_bytes) {
    if (weight_bytes > kRowSplitWeightBytes || st.T == 1 || nblk * div_up(st.N, kRowTile) == 1)
      return;
    const int64_t N = st.N, groups = std::min(div_up(N, kBlockRows), max_count(N));
    if (groups == 1) return;
    // Steps each row is active in (rows 0 .. bs[t]-1 are, in every step t), then cuts
    // where the running total comes nearest to each group's even share.
    std::vector<int64_t> steps_of_row(N, 0);
    for (int64_t t = 0; t < st.T; ++t) ++steps_of_row[st.bs[t] - 1];
    for (int64_t r = N - 2; r >= 0; --r) steps_of_row[r] += steps_of_row[r + 1];
    bounds_.push_back(0);
    int64_t r = 0, total = 0;
    for (int64_t g = 1; g < groups; ++g) {
      const int64_t share = st.S * g / groups;
      // A row for every group; then rows while the middle of the next one is within the
      // share, leaving a row for every later group.
      total += steps_of_row[r++];
      while (r < N - (groups - g) && 2 * total + steps_of_row[r] <= 2 * share)
        total += steps_of_row[r++];
      bounds_.push_back(r);
    }
    bounds_.push_back(N);
    tokens_per_group_ = div_up(st.S, groups);
  }

  bool by_rows() const { return !bounds_.empty(); }
  int64_t count() const { return std::max<int64_t>(0, int64_t(bounds_.size()) - 1); }
  int64_t first_row(int64_t g) const { return bounds_[g]; }
  int64_t end_row(int64_t g) const { return bounds_[g + 1]; }
  // The group of row r (0 without groups).
  int64_t group_of(int64_t r) const {
    if (!by_rows()) return 0;
    return std::upper_bound(bounds_.begin() + 1, bounds_.end() - 1, r) - (bounds_.begin() + 1);
  }
  // Active rows over the sequence per group (on average), for work estimates.
  int64_t tokens_per_group() const { return tokens_per_group_; }

 private:
  c10::SmallVector<int64_t, 9> bounds_;
  int64_t tokens_per_group_ = 0;
};

// The part of one time step that a call computes: a row group's rows on the calling
// thread, or the whole step in parallel tiles split by units.
class StepShare {
 public:
  static StepShare rows(int64_t r0, int64_t r1) { return StepShare(true, r0, r1); }
  static StepShare whole() {
    return StepShare(false, 0, std::numeric_limits<int64_t>::max());
  }

  // The share's rows of a step of bt active rows: first_row() .. end_row(bt) - 1 (none
  // when end_row(bt) <= first_row()).
  int64_t first_row() const { return r0_; }
  int64_t end_row(int64_t bt) const { return std::min(r1_, bt); }

  // Runs f(r0, r1, k0, k1) over the share of a step of bt rows by `width` columns cut in
  // blocks of kUnitBlock: rows r0 .. r1-1 by blocks k0 .. k1-1. By rows, once for the
  // group's rows and every block; by units, over tiles of kRowTile rows by one block in
  // parallel, with fmas_per_cell multiply-adds per row and column for the work estimate.
  template <class F>
  void tiles(int64_t bt, int64_t width, int64_t fmas_per_cell, const F& f) const {
    const int64_t nblk = div_up(width, kUnitBlock);
    if (by_rows_) {
      if (r0_ < end_row(bt)) f(r0_, end_row(bt), int64_t(0), nblk);
      return;
    }
    const int64_t nrt = div_up(bt, kRowTile);
    parallel_tiles(nrt * nblk,
                   std::min(bt, kRowTile) * std::min(width, kUnitBlock) * fmas_per_cell,
                   [&](int64_t tile) {
      const int64_t r0 = tile % nrt * kRowTile, k = tile / nrt;
      f(r0, std::min(bt, r0 + kRowTile), k, k + 1);
    });
  }

 private:
  StepShare(bool by_rows, int64_t r0, int64_t r1) : by_rows_(by_rows), r0_(r0), r1_(r1) {}

  bool by_rows_;
  int64_t r0_, r1_;
};

// Runs step(i, share) for the steps i = 0..T-1 in processing order, or T-1..0 when
// `backward`: by rows, each group's steps in one parallel region (fmas_per_row: the
// multiply-adds of one row's step, for the work estimate), skipping the steps where none
// of the group's rows are active; by units, every step's whole share in turn, after
// before_step(i) on the calling thread.
template <class BeforeStep, class Step>
void run_steps(const Steps& st, const RowGroups& groups, bool backward, int64_t fmas_per_row,
               const BeforeStep& before_step, const Step& step) {
  auto each_step = [&](const auto& body) {
    for (int64_t n = 0; n < st.T; ++n) body(backward ? st.T - 1 - n : n);
  };
  if (groups.by_rows()) {
    parallel_tiles(groups.count(), groups.tokens_per_group() * fmas_per_row, [&](int64_t g) {
      const StepShare share = StepShare::rows(groups.first_row(g), groups.end_row(g));
      each_step([&](int64_t i) {
        if (share.first_row() < share.end_row(st.bs[st.time(i)])) step(i, share);
      });
    });
    return;
  }
  each_step([&](int64_t i) {
    before_step(i);
    step(i, StepShare::whole());
  });
}

}  // namespace cpu
}  // namespace fastrnn
