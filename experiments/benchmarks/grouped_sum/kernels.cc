// GPart CPU kernels through XLA FFI, for experiments/benchmarks/grouped_sum: the group-id hash
// fused with the grouped sum (backward, P^T g) and with the gather-add (forward, w0 + P theta).
// Ids are computed in registers, chunk by chunk, and never stored; the golden ids of
// gpart_jax.hashing are reproduced bit for bit. A prototype: gpart_jax does not use it.
//
// kernels.py builds it on first use (g++ -O3 -march=native -shared -fPIC -std=c++17 against the
// XLA FFI headers that jaxlib ships, jax.ffi.include_dir()) and registers both targets.
//
// Targets
//   gpart_grouped_sum(cot_0 .. cot_{L-1}, [table_0 .. table_{B-1}]) -> f32[d]
//       out[theta_offset(b) + g(p)] += cot_l[k] over all elements (unscaled: the caller
//       multiplies by the scales, as core._expand_bwd does).
//   gpart_expand(pairs f32[d, 2] = (theta, scales), [base_0 .. base_{L-1}], [walk tables]) -> L leaves
//       out_l[k] = fma(theta[j], scales[j], base_l[k])  or  theta[j] * scales[j]  (has_base),
//       j = theta_offset(b) + g(p): bit-identical to XLA's fused forward and to _expand_impl.
//
// Per leaf l: block index, position offset in its block, element order (native, or "torch":
// a 2-D (in, out) kernel whose element (a, c) has position c * in + a).
// Per block b: scheme parameters (stateless: seed; balanced: N_b, u, v, six round keys, walk
// table buffer), d_b and theta offset.
//
// Work is split into `parts` fixed, contiguous ranges of the concatenated leaves; each part
// sums into its own d-vector, and the parts are added in order at the end, so the result does
// not depend on the number of threads or on scheduling (only on `parts`).

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr uint64_t kGamma = 0x9E3779B97F4A7C15ull;
constexpr uint64_t kMix1 = 0xBF58476D1CE4E5B9ull;
constexpr uint64_t kMix2 = 0x94D049BB133111EBull;
constexpr int kChunk = 512;  // ids computed per inner step (kept in L1)

// ---------------------------------------------------------------------------- exact mod by d
// x mod d for integers x < 2**53 held in doubles: q = floor(x * (1/d)) is off by at most one
// (relative error of x * inv below 2**-51, so absolute error below 1 for x < 2**53, d >= 3);
// r = x - q d is exact (both < 2**53) and one compare-and-add on each side fixes it.
struct DMod {
  double dd, inv;
  explicit DMod(uint64_t d = 1) : dd(static_cast<double>(d)), inv(1.0 / static_cast<double>(d)) {}
  inline double operator()(double x) const {
    double q = static_cast<double>(static_cast<int64_t>(x * inv));  // x >= 0: truncation is floor
    double r = x - q * dd;
    r = r < 0.0 ? r + dd : r;
    r = r >= dd ? r - dd : r;
    return r;
  }
};

inline double u32_to_double(uint32_t x) { return static_cast<double>(x); }

// Conversions by the 2**52 trick (an OR and a subtract; exact for integers below 2**52), which
// vectorize to cheaper instructions than the int64 <-> double conversions.
constexpr double k2p52 = 4503599627370496.0;          // 2**52
constexpr double kRound = 6755399441055744.0;         // 1.5 * 2**52: x + kRound - kRound rounds
constexpr uint64_t k2p52Bits = 0x4330000000000000ull;  // bits of 2**52
inline double u_to_double(uint64_t v) {  // v < 2**52
  uint64_t bits = v | k2p52Bits;
  double x;
  std::memcpy(&x, &bits, 8);
  return x - k2p52;
}
inline uint32_t double_to_u32(double r) {  // 0 <= r < 2**32, an integer
  double y = r + k2p52;
  uint64_t bits;
  std::memcpy(&bits, &y, 8);
  return static_cast<uint32_t>(bits);
}

// ---------------------------------------------------------------------------- stateless
// z mod d for a 64-bit z = h1 2**48 + h0 2**32 + lo (h1, h0 16 bits, lo 32 bits) and d < 2**31:
// x = h1 (2**48 mod d) + h0 (2**32 mod d) + lo < 2**17 d + 2**32 < 2**49 is exact in a double
// and congruent to z, so one DMod step gives z mod d.
struct Stateless {
  uint64_t d;
  DMod mod;
  double c48, c32;
  bool pow2;
  explicit Stateless(uint64_t d_)
      : d(d_), mod(d_), c48(static_cast<double>((uint64_t{1} << 48) % d_)),
        c32(static_cast<double>((uint64_t{1} << 32) % d_)), pow2((d_ & (d_ - 1)) == 0) {}

  static inline uint64_t splitmix(uint64_t z) {
    z = (z ^ (z >> 30)) * kMix1;
    z = (z ^ (z >> 27)) * kMix2;
    return z ^ (z >> 31);
  }

  // ids of positions p0 + j * stride (j < n), hash state z = p + base (mod 2**64)
  inline void ids(uint64_t base, uint64_t p0, uint64_t stride, int n, uint32_t* __restrict out) const {
    const uint64_t z0 = base + p0;
    if (pow2) {
      for (int j = 0; j < n; ++j)
        out[j] = static_cast<uint32_t>(splitmix(z0 + j * stride) & (d - 1));
      return;
    }
    if (d <= 2) {
      for (int j = 0; j < n; ++j) out[j] = static_cast<uint32_t>(splitmix(z0 + j * stride) % d);
      return;
    }
    const double c48_ = c48, c32_ = c32, dd = mod.dd, inv = mod.inv;
#pragma GCC ivdep
    for (int j = 0; j < n; ++j) {
      const uint64_t z = splitmix(z0 + static_cast<uint64_t>(j) * stride);
      // x = h1 (2**48 mod d) + h0 (2**32 mod d) + lo: exact in double, congruent to z
      const double x = u_to_double(z >> 48) * c48_ + u_to_double((z >> 32) & 0xFFFFu) * c32_ +
                       u_to_double(z & 0xFFFFFFFFu);
      // q = round(x / d) is floor(x / d) or one more (|x * inv - x / d| < 1/24); r in (-d, d)
      const double q = (x * inv + kRound) - kRound;
      double r = x - q * dd;
      r = r < 0.0 ? r + dd : r;
      out[j] = double_to_u32(r);
    }
  }
};

// ---------------------------------------------------------------------------- balanced
// x mod m for x < 2**32 and 1024 <= m < 2**31 in float32 lanes: q = trunc(float(x) * (1/m)) is
// within one of floor(x / m) (relative error <= 3 * 2**-24 and x / m < 2**22), fixed both ways.
inline uint32_t modf32(uint32_t x, uint32_t m, float inv) {
  const uint32_t q = static_cast<uint32_t>(static_cast<float>(x) * inv);
  int32_t r = static_cast<int32_t>(x - q * m);
  r = r < 0 ? r + static_cast<int32_t>(m) : r;
  r = r >= static_cast<int32_t>(m) ? r - static_cast<int32_t>(m) : r;
  return static_cast<uint32_t>(r);
}
// x mod m for x < 2**32, any 1 <= m < 2**31 (doubles; for the small moduli of small N)
inline uint32_t modf64(uint32_t x, double m, double inv) {
  const double xd = u_to_double(x);
  const double q = (xd * inv + kRound) - kRound;
  double r = xd - q * m;
  r = r < 0.0 ? r + m : r;
  return double_to_u32(r);
}
inline uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  return x ^ (x >> 16);
}

struct Balanced {
  uint32_t n, u, v, m, d;
  uint32_t keys[6];
  const int32_t* table;  // walk table, m - n entries
  Balanced(uint32_t n_, uint32_t u_, uint32_t v_, const int64_t* keys_, uint64_t d_, const int32_t* table_)
      : n(n_), u(u_), v(v_), m(u_ * v_), d(static_cast<uint32_t>(d_)), table(table_) {
    for (int r = 0; r < 6; ++r) keys[r] = static_cast<uint32_t>(keys_[r]);
  }

  template <bool kFloat>
  static inline uint32_t modk(uint32_t x, uint32_t m, float fi, double di) {
    return kFloat ? modf32(x, m, fi) : modf64(x, static_cast<double>(m), di);
  }

  // Round-major over a chunk: each round is one vectorized pass over all cnt lanes, so the six
  // dependent rounds of one position overlap with other positions' (latency, not throughput).
  template <bool kFloat>
  inline void feistel(uint64_t p0, uint64_t stride, int cnt, uint32_t* __restrict A,
                      uint32_t* __restrict B) const {
    const float fiv = 1.0f / static_cast<float>(v);
    const double div = 1.0 / static_cast<double>(v);
    const uint32_t V = v, P0 = static_cast<uint32_t>(p0), S = static_cast<uint32_t>(stride);
#pragma GCC ivdep
    for (int j = 0; j < cnt; ++j) {
      const uint32_t x = P0 + static_cast<uint32_t>(j) * S;
      const uint32_t b = modk<kFloat>(x, V, fiv, div);
      // (x - b) / v is an integer below 2**16: the rounded quotient is exact
      A[j] = kFloat ? static_cast<uint32_t>(static_cast<float>(x - b) * fiv + 0.5f)
                    : static_cast<uint32_t>(static_cast<double>(x - b) * div + 0.5);
      B[j] = b;
    }
    for (int r = 0; r < 6; ++r) {
      const uint32_t kr = keys[r], M = (r & 1) ? v : u;
      const float fi = 1.0f / static_cast<float>(M);
      const double di = 1.0 / static_cast<double>(M);
      uint32_t* __restrict a = (r & 1) ? B : A;  // (a, b) -> (b, (a + F(b)) mod M): new b over a
      const uint32_t* __restrict b = (r & 1) ? A : B;
#pragma GCC ivdep
      for (int j = 0; j < cnt; ++j) {
        const uint32_t s = a[j] + modk<kFloat>(mix32(b[j] ^ kr), M, fi, di);
        a[j] = s >= M ? s - M : s;
      }
    }
  }

  inline void ids(uint64_t /*base*/, uint64_t p0, uint64_t stride, int cnt, uint32_t* __restrict out) const {
    alignas(64) uint32_t A[kChunk], B[kChunk];
    if (u >= 1024 && v >= 1024)
      feistel<true>(p0, stride, cnt, A, B);
    else
      feistel<false>(p0, stride, cnt, A, B);
    const uint32_t V = v, N = n, W = m - n;
    for (int j = 0; j < cnt; ++j) {  // after six rounds (a, b) = (A, B); walk the rare y >= N
      const uint32_t y = A[j] * V + B[j];
      out[j] = y >= N ? static_cast<uint32_t>(table[std::min(y - N, W - 1)]) : y;
    }
    if ((d & (d - 1)) == 0) {
      for (int j = 0; j < cnt; ++j) out[j] &= d - 1;
    } else if (d >= 1024) {
      const float fi = 1.0f / static_cast<float>(d);
      const uint32_t D = d;
#pragma GCC ivdep
      for (int j = 0; j < cnt; ++j) out[j] = modf32(out[j], D, fi);
    } else {
      const double di = 1.0 / static_cast<double>(d), dd = static_cast<double>(d);
#pragma GCC ivdep
      for (int j = 0; j < cnt; ++j) out[j] = modf64(out[j], dd, di);
    }
  }
};

// ---------------------------------------------------------------------------- work layout
struct Pair {  // theta_j and s_j side by side: one cache line fetch per element
  float theta, scale;
};

struct Leaf {
  int64_t numel, offset, torch_in, torch_out;
  int block;
};

// Calls fn(leaf, start, count, p0, stride) over maximal runs of elements [start, start+count)
// of one leaf (memory order) whose positions are p0 + j * stride, for global element range
// [lo, hi) of the concatenated leaves.
template <class F>
void for_runs(const std::vector<Leaf>& leaves, int64_t lo, int64_t hi, F&& fn) {
  int64_t base = 0;
  for (size_t l = 0; l < leaves.size() && base < hi; ++l) {
    const Leaf& L = leaves[l];
    const int64_t s = std::max(lo, base), e = std::min(hi, base + L.numel);
    if (s < e) {
      int64_t k = s - base;
      const int64_t kend = e - base;
      while (k < kend) {
        if (L.torch_in == 0) {
          const int64_t c = std::min<int64_t>(kChunk, kend - k);
          fn(l, k, static_cast<int>(c), static_cast<uint64_t>(L.offset + k), uint64_t{1});
          k += c;
        } else {  // row a = k / out, column c = k % out; position c * in + a
          const int64_t a = k / L.torch_out, c0 = k % L.torch_out;
          const int64_t c = std::min<int64_t>({kChunk, L.torch_out - c0, kend - k});
          fn(l, k, static_cast<int>(c), static_cast<uint64_t>(L.offset + c0 * L.torch_in + a),
             static_cast<uint64_t>(L.torch_in));
          k += c;
        }
      }
    }
    base += L.numel;
  }
}

// Runs body(part) for part in [0, parts) on the caller and the XLA intra-op pool. The caller
// claims parts too and waits only for parts already claimed, so it never deadlocks.
template <class F>
void run_parts(ffi::ThreadPool& pool, int parts, F&& body) {
  struct State {
    std::atomic<int> next{0}, active{0};
    std::mutex mu;
    std::condition_variable cv;
  };
  auto st = std::make_shared<State>();
  auto work = [st, parts, &body]() {
    st->active.fetch_add(1);
    for (int p; (p = st->next.fetch_add(1)) < parts;) body(p);
    if (st->active.fetch_sub(1) == 1) {
      std::lock_guard<std::mutex> lock(st->mu);
      st->cv.notify_all();
    }
  };
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const int helpers = static_cast<int>(std::min<int64_t>(threads, parts) - 1);
  for (int t = 0; t < helpers; ++t) pool.Schedule([work]() { work(); });
  st->active.fetch_add(1);
  for (int p; (p = st->next.fetch_add(1)) < parts;) body(p);
  st->active.fetch_sub(1);
  std::unique_lock<std::mutex> lock(st->mu);
  st->cv.wait(lock, [&] { return st->active.load() == 0; });
}

struct Blocks {
  std::vector<Stateless> st;
  std::vector<Balanced> bal;
  std::vector<int64_t> theta_offset, base;
  bool balanced = false;
};

ffi::Error make_blocks(int64_t scheme, ffi::Span<const int64_t> block_d,
                       ffi::Span<const int64_t> block_theta_offset,
                       ffi::Span<const int64_t> block_seed, ffi::Span<const int64_t> block_n,
                       ffi::Span<const int64_t> block_u, ffi::Span<const int64_t> block_v,
                       ffi::Span<const int64_t> block_keys, std::vector<const int32_t*> tables,
                       Blocks& out) {
  const size_t nb = block_d.size();
  out.balanced = scheme == 1;
  for (size_t b = 0; b < nb; ++b) {
    out.theta_offset.push_back(block_theta_offset[b]);
    out.base.push_back(static_cast<int64_t>(static_cast<uint64_t>(block_seed[b]) + kGamma));
    if (!out.balanced) {
      out.st.emplace_back(static_cast<uint64_t>(block_d[b]));
    } else {
      if (block_keys.size() < 6 * (b + 1) || tables.size() <= b)
        return ffi::Error::InvalidArgument("balanced: keys or tables missing");
      out.bal.emplace_back(static_cast<uint32_t>(block_n[b]), static_cast<uint32_t>(block_u[b]),
                           static_cast<uint32_t>(block_v[b]), &block_keys[6 * b],
                           static_cast<uint64_t>(block_d[b]), tables[b]);
    }
  }
  return ffi::Error::Success();
}

inline void block_ids(const Blocks& B, int b, uint64_t p0, uint64_t stride, int n, uint32_t* ids) {
  if (B.balanced)
    B.bal[b].ids(0, p0, stride, n, ids);
  else
    B.st[b].ids(static_cast<uint64_t>(B.base[b]), p0, stride, n, ids);
}

// ---------------------------------------------------------------------------- handlers
ffi::Error GroupedSumImpl(ffi::ThreadPool pool, ffi::RemainingArgs args,
                          ffi::Result<ffi::Buffer<ffi::F32>> out, int64_t scheme, int64_t parts,
                          ffi::Span<const int64_t> leaf_block, ffi::Span<const int64_t> leaf_offset,
                          ffi::Span<const int64_t> leaf_torch_in,
                          ffi::Span<const int64_t> leaf_torch_out,
                          ffi::Span<const int64_t> block_d,
                          ffi::Span<const int64_t> block_theta_offset,
                          ffi::Span<const int64_t> block_seed, ffi::Span<const int64_t> block_n,
                          ffi::Span<const int64_t> block_u, ffi::Span<const int64_t> block_v,
                          ffi::Span<const int64_t> block_keys) {
  const size_t nl = leaf_block.size(), nb = block_d.size();
  std::vector<const float*> g(nl);
  std::vector<Leaf> leaves(nl);
  int64_t total = 0;
  for (size_t l = 0; l < nl; ++l) {
    auto buf = args.get<ffi::AnyBuffer>(l);
    if (buf.has_error()) return buf.error();
    if (buf->element_type() != ffi::F32) return ffi::Error::InvalidArgument("cotangents must be f32");
    g[l] = static_cast<const float*>(buf->untyped_data());
    leaves[l] = Leaf{static_cast<int64_t>(buf->element_count()), leaf_offset[l], leaf_torch_in[l],
                     leaf_torch_out[l], static_cast<int>(leaf_block[l])};
    total += leaves[l].numel;
  }
  std::vector<const int32_t*> tables;
  if (scheme == 1)
    for (size_t b = 0; b < nb; ++b) {
      auto buf = args.get<ffi::AnyBuffer>(nl + b);
      if (buf.has_error()) return buf.error();
      tables.push_back(static_cast<const int32_t*>(buf->untyped_data()));
    }
  Blocks B;
  if (auto err = make_blocks(scheme, block_d, block_theta_offset, block_seed, block_n, block_u,
                             block_v, block_keys, tables, B);
      !err.success())
    return err;
  const int64_t d = static_cast<int64_t>(out->element_count());
  float* result = out->typed_data();
  parts = std::max<int64_t>(1, std::min<int64_t>(parts, std::max<int64_t>(total, 1)));
  std::vector<float> acc(parts > 1 ? static_cast<size_t>(parts) * d : 0);
  run_parts(pool, static_cast<int>(parts), [&](int p) {
    float* a = parts > 1 ? acc.data() + static_cast<size_t>(p) * d : result;
    std::memset(a, 0, sizeof(float) * d);
    const int64_t lo = total * p / parts, hi = total * (p + 1) / parts;
    alignas(64) uint32_t ids[kChunk];
    for_runs(leaves, lo, hi, [&](size_t l, int64_t k, int n, uint64_t p0, uint64_t stride) {
      const int b = leaves[l].block;
      block_ids(B, b, p0, stride, n, ids);
      float* ab = a + B.theta_offset[b];
      const float* gl = g[l] + k;
      for (int j = 0; j < n; ++j) ab[ids[j]] += gl[j];
    });
  });
  if (parts > 1) {  // fixed-order reduction, split over d across the pool
    const int rparts = static_cast<int>(std::min<int64_t>(parts, (d + 4095) / 4096));
    run_parts(pool, rparts, [&](int r) {
      const int64_t lo = d * r / rparts, hi = d * (r + 1) / rparts;
      for (int64_t i = lo; i < hi; ++i) {
        float s = acc[i];
        for (int64_t p = 1; p < parts; ++p) s += acc[static_cast<size_t>(p) * d + i];
        result[i] = s;
      }
    });
  }
  return ffi::Error::Success();
}

ffi::Error ExpandImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> pairs, ffi::RemainingArgs args,
                      ffi::RemainingRets rets, int64_t scheme, int64_t parts, int64_t has_base,
                      ffi::Span<const int64_t> leaf_block, ffi::Span<const int64_t> leaf_offset,
                      ffi::Span<const int64_t> leaf_torch_in,
                      ffi::Span<const int64_t> leaf_torch_out, ffi::Span<const int64_t> block_d,
                      ffi::Span<const int64_t> block_theta_offset,
                      ffi::Span<const int64_t> block_seed, ffi::Span<const int64_t> block_n,
                      ffi::Span<const int64_t> block_u, ffi::Span<const int64_t> block_v,
                      ffi::Span<const int64_t> block_keys) {
  const size_t nl = leaf_block.size(), nb = block_d.size();
  std::vector<const float*> base(nl, nullptr);
  std::vector<float*> outs(nl);
  std::vector<Leaf> leaves(nl);
  int64_t total = 0;
  size_t arg = 0;
  for (size_t l = 0; l < nl; ++l) {
    auto r = rets.get<ffi::AnyBuffer>(l);
    if (r.has_error()) return r.error();
    outs[l] = static_cast<float*>((*r)->untyped_data());
    if (has_base) {
      auto buf = args.get<ffi::AnyBuffer>(arg++);
      if (buf.has_error()) return buf.error();
      if (buf->element_type() != ffi::F32) return ffi::Error::InvalidArgument("base must be f32");
      base[l] = static_cast<const float*>(buf->untyped_data());
    }
    leaves[l] = Leaf{static_cast<int64_t>((*r)->element_count()), leaf_offset[l], leaf_torch_in[l],
                     leaf_torch_out[l], static_cast<int>(leaf_block[l])};
    total += leaves[l].numel;
  }
  std::vector<const int32_t*> tables;
  if (scheme == 1)
    for (size_t b = 0; b < nb; ++b) {
      auto buf = args.get<ffi::AnyBuffer>(arg++);
      if (buf.has_error()) return buf.error();
      tables.push_back(static_cast<const int32_t*>(buf->untyped_data()));
    }
  Blocks B;
  if (auto err = make_blocks(scheme, block_d, block_theta_offset, block_seed, block_n, block_u,
                             block_v, block_keys, tables, B);
      !err.success())
    return err;
  const Pair* t = reinterpret_cast<const Pair*>(pairs.typed_data());
  parts = std::max<int64_t>(1, std::min<int64_t>(parts, std::max<int64_t>(total, 1)));
  run_parts(pool, static_cast<int>(parts), [&](int p) {
    const int64_t lo = total * p / parts, hi = total * (p + 1) / parts;
    alignas(64) uint32_t ids[kChunk];
    for_runs(leaves, lo, hi, [&](size_t l, int64_t k, int n, uint64_t p0, uint64_t stride) {
      const int b = leaves[l].block;
      block_ids(B, b, p0, stride, n, ids);
      const Pair* tb = t + B.theta_offset[b];
      float* __restrict o = outs[l] + k;
      if (base[l]) {  // one rounding, as XLA's fused w0 + (theta * s)[g] (it contracts to an FMA)
        const float* __restrict w = base[l] + k;
        for (int j = 0; j < n; ++j) {
          const Pair p = tb[ids[j]];
          o[j] = std::fma(p.theta, p.scale, w[j]);
        }
      } else {  // (theta * s)[g]: the product rounded once, as core._expand_impl
        for (int j = 0; j < n; ++j) {
          const Pair p = tb[ids[j]];
          o[j] = p.theta * p.scale;
        }
      }
    });
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(GpartGroupedSum, GroupedSumImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .RemainingArgs()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("scheme")
                                  .Attr<int64_t>("parts")
                                  .Attr<ffi::Span<const int64_t>>("leaf_block")
                                  .Attr<ffi::Span<const int64_t>>("leaf_offset")
                                  .Attr<ffi::Span<const int64_t>>("leaf_torch_in")
                                  .Attr<ffi::Span<const int64_t>>("leaf_torch_out")
                                  .Attr<ffi::Span<const int64_t>>("block_d")
                                  .Attr<ffi::Span<const int64_t>>("block_theta_offset")
                                  .Attr<ffi::Span<const int64_t>>("block_seed")
                                  .Attr<ffi::Span<const int64_t>>("block_n")
                                  .Attr<ffi::Span<const int64_t>>("block_u")
                                  .Attr<ffi::Span<const int64_t>>("block_v")
                                  .Attr<ffi::Span<const int64_t>>("block_keys"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(GpartExpand, ExpandImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<int64_t>("scheme")
                                  .Attr<int64_t>("parts")
                                  .Attr<int64_t>("has_base")
                                  .Attr<ffi::Span<const int64_t>>("leaf_block")
                                  .Attr<ffi::Span<const int64_t>>("leaf_offset")
                                  .Attr<ffi::Span<const int64_t>>("leaf_torch_in")
                                  .Attr<ffi::Span<const int64_t>>("leaf_torch_out")
                                  .Attr<ffi::Span<const int64_t>>("block_d")
                                  .Attr<ffi::Span<const int64_t>>("block_theta_offset")
                                  .Attr<ffi::Span<const int64_t>>("block_seed")
                                  .Attr<ffi::Span<const int64_t>>("block_n")
                                  .Attr<ffi::Span<const int64_t>>("block_u")
                                  .Attr<ffi::Span<const int64_t>>("block_v")
                                  .Attr<ffi::Span<const int64_t>>("block_keys"));
