// Fused CPU kernels for training GPT-2: attention softmax + dropout, dropout, and the LM head's
// cross-entropy with its gradient. Built on first use by gpt2tune/core/native.py with the
// machine's compiler (torch.utils.cpp_extension); gpt2tune/core/ops.py keeps the plain PyTorch
// expression each one replaces, and the tests compare the two.
//
// Why by hand: PyTorch's fused CPU attention has no dropout, and its elementwise kernels make one
// pass over memory per operation. A row of attention scores (<= 1024 values) or of logits
// (50,257) fits in the core's cache, so doing softmax, the dropout mask and the scaling in one
// visit per row turns about ten passes over (B, heads, T, T) float32 tensors into one or two.
//
// Random numbers come from Philox-4x32-10 (Salmon et al., SC'11), a counter-based generator: the
// keep-bit of an element is a pure function of (seed, its index), so backward regenerates the
// mask instead of storing it, and the loops vectorise (no generator state is carried along).
// The seed is drawn from torch's default generator for every call, so a run's masks follow
// torch.manual_seed and the checkpointed RNG state (resume stays exact).
//
// Every loop here is plain scalar C++ written so that the compiler vectorises it (-O3
// -march=native): no calls into libm inside the loops (exp is a polynomial below), selects
// instead of branches.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

// The loops are compiled as functions of their own: inlined into at::parallel_for's lambda
// (inside its exception-handling region) GCC gives up vectorising them.
#define NOINLINE __attribute__((noinline))

namespace {

using at::Tensor;

// ------------------------------------------------------------------------------ numbers

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// The element type of a float32 or bfloat16 tensor's data as the kernels read it: float, or the
// raw uint16 bits of bfloat16. ``f`` is called with a value of that type.
template <typename F>
void for_each_dtype(const Tensor& t, F&& f) {
  if (t.scalar_type() == at::kFloat) {
    f(float{});
  } else {
    f(uint16_t{});
  }
}

template <typename T>
T* raw(const Tensor& t) {
  return reinterpret_cast<T*>(t.data_ptr());
}

// Loads and stores of the two element types, float32 and bfloat16 (as raw uint16 bits, so that
// the conversion is integer work the vectoriser understands).
inline float load(const float* p, int64_t i) { return p[i]; }
inline float load(const uint16_t* p, int64_t i) { return bits_to_float(uint32_t(p[i]) << 16); }
inline void store(float* p, int64_t i, float x) { p[i] = x; }
inline void store(uint16_t* p, int64_t i, float x) {
  // round to nearest even, as c10::BFloat16 does; NaN stays a (quiet) NaN
  uint32_t u = float_to_bits(x);
  uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  uint32_t nan = (u >> 16) | 0x40u;
  p[i] = uint16_t(x != x ? nan : rounded);
}

// exp(x) for x <= 0 (every use here subtracts a row maximum first): x = k ln2 + r with
// |r| <= ln2/2, exp(r) by its Taylor polynomial to degree 6 (relative error < 2e-7), 2^k put
// into the exponent bits. Below -87 (where float32 loses normal numbers) it returns 0.
inline float exp_nonpositive(float x) {
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  float xc = std::max(x, -87.0f);
  float k = (xc * 1.44269504088896341f + shifter) - shifter;
  float r = xc - k * 0.693145751953125f;
  r = r - k * 1.428606765330187e-06f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  float scale = bits_to_float(uint32_t(int32_t(k) + 127) << 23);
  return x < -87.0f ? 0.0f : p * scale;
}

// Reductions over a row with kLanes independent accumulators: a float sum or maximum is a
// serial chain to the compiler (without -ffast-math it may not reorder it), lanes make it
// vector work. NaN propagates through the sums.
constexpr int64_t kLanes = 16;

template <typename T>
float row_max(const T* x, int64_t n) {
  float acc[kLanes];
  for (int64_t l = 0; l < kLanes; ++l) acc[l] = -std::numeric_limits<float>::infinity();
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) acc[l] = std::max(acc[l], load(x, j + l));
  }
  for (; j < n; ++j) acc[0] = std::max(acc[0], load(x, j));
  float m = acc[0];
  for (int64_t l = 1; l < kLanes; ++l) m = std::max(m, acc[l]);
  return m;
}

// sum_j exp(x[j] - shift)
template <typename T>
float row_sum_exp(const T* x, int64_t n, float shift) {
  float acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) acc[l] += exp_nonpositive(load(x, j + l) - shift);
  }
  for (; j < n; ++j) acc[0] += exp_nonpositive(load(x, j) - shift);
  float s = 0.0f;
  for (int64_t l = 0; l < kLanes; ++l) s += acc[l];
  return s;
}

inline float row_sum(const float* x, int64_t n) {
  float acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) acc[l] += x[j + l];
  }
  for (; j < n; ++j) acc[0] += x[j];
  float s = 0.0f;
  for (int64_t l = 0; l < kLanes; ++l) s += acc[l];
  return s;
}

// sum_j a[j] * b[j]
inline float row_dot(const float* a, const float* b, int64_t n) {
  float acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) acc[l] += a[j + l] * b[j + l];
  }
  for (; j < n; ++j) acc[0] += a[j] * b[j];
  float s = 0.0f;
  for (int64_t l = 0; l < kLanes; ++l) s += acc[l];
  return s;
}

// ------------------------------------------------------------------------------ random bits

// Philox-4x32-10: four 32-bit outputs per (counter, key). Outputs for counter (c, row, stream)
// go to elements c, c + q, c + 2q, c + 3q of a run of 4q elements, so each output lane writes
// a contiguous array (this is what lets the loop vectorise).
constexpr uint32_t kPhiloxM0 = 0xD2511F53u, kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u, kPhiloxW1 = 0xBB67AE85u;

struct Stream {
  uint32_t key0, key1;  // the seed
  uint32_t tag;         // which use (attention, dropout): different uses, different numbers
  uint32_t threshold;   // keep an element when its 32 random bits are >= this
};

Stream make_stream(int64_t seed, uint32_t tag, double p) {
  double t = std::ceil(p * 4294967296.0);
  uint32_t threshold = t >= 4294967295.0 ? 0xFFFFFFFFu : uint32_t(t);
  return {uint32_t(uint64_t(seed)), uint32_t(uint64_t(seed) >> 32), tag, threshold};
}

// keep[0 : n] for run ``run`` (a row of attention scores, or a block of a flat tensor).
void keep_bits(const Stream& s, uint64_t run, int64_t n, uint8_t* keep) {
  const int64_t q = (n + 3) / 4;
  const uint32_t run_lo = uint32_t(run), run_hi = uint32_t(run >> 32);
  // lane buffers: the vectorised loop writes four contiguous arrays; copied into keep after
  alignas(64) uint8_t lanes[4][256];
  for (int64_t base = 0; base < q; base += 256) {
    const int64_t m = std::min<int64_t>(256, q - base);
    for (int64_t c = 0; c < m; ++c) {
      uint32_t c0 = uint32_t(base + c), c1 = run_lo, c2 = run_hi, c3 = s.tag;
      uint32_t k0 = s.key0, k1 = s.key1;
      for (int round = 0; round < 10; ++round) {
        uint64_t p0 = uint64_t(kPhiloxM0) * c0;
        uint64_t p1 = uint64_t(kPhiloxM1) * c2;
        uint32_t n0 = uint32_t(p1 >> 32) ^ c1 ^ k0;
        uint32_t n2 = uint32_t(p0 >> 32) ^ c3 ^ k1;
        c1 = uint32_t(p1);
        c3 = uint32_t(p0);
        c0 = n0;
        c2 = n2;
        k0 += kPhiloxW0;
        k1 += kPhiloxW1;
      }
      lanes[0][c] = c0 >= s.threshold;
      lanes[1][c] = c1 >= s.threshold;
      lanes[2][c] = c2 >= s.threshold;
      lanes[3][c] = c3 >= s.threshold;
    }
    for (int lane = 0; lane < 4; ++lane) {
      const int64_t start = lane * q + base;
      const int64_t count = std::min<int64_t>(m, n - start);
      if (count > 0) std::memcpy(keep + start, lanes[lane], size_t(count));
    }
  }
}

constexpr uint32_t kTagAttention = 1, kTagDropout = 2;

// ------------------------------------------------------------------------------ attention

// Rows of (N, T, S) scores; row r is query i = r % T of head n = r / T. A query sees key j when
// j < i + S - T + 1 (causal, the T queries being the last T positions) and, with a mask, when
// allowed[n / heads, i, j] is set.
struct AttnShape {
  int64_t N, T, S, heads;
};

// The keys row r may see: the first ``limit`` (causal: i + S - T + 1 for query i = r % T; all
// S with a mask), and with a mask its row of ``allowed`` (nullptr without one).
struct RowKeys {
  int64_t limit;
  const uint8_t* ok;
};

inline RowKeys row_keys(const AttnShape& a, const uint8_t* allowed, int64_t r) {
  const int64_t i = r % a.T;
  if (allowed) return {a.S, allowed + ((r / a.T / a.heads) * a.T + i) * a.S};
  return {std::min(i + a.S - a.T + 1, a.S), nullptr};
}

// Softmax of scale * scores over the keys a query sees, then dropout: out = P * keep / (1 - p).
// lse (log-sum-exp of the scaled scores, per row) is what backward needs to recompute P.
template <typename T>
NOINLINE void attn_fwd_rows(const T* scores, const uint8_t* allowed, T* out, float* lse, AttnShape a,
                   float scale, const Stream& rng, double p, int64_t begin, int64_t end) {
  std::vector<float> x(a.S);
  std::vector<uint8_t> keep(a.S);
  const float keep_scale = float(1.0 / (1.0 - p));
  for (int64_t r = begin; r < end; ++r) {
    const T* s = scores + r * a.S;
    T* o = out + r * a.S;
    const auto [limit, ok] = row_keys(a, allowed, r);
    const float ninf = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < limit; ++j) x[j] = load(s, j) * scale;
    if (ok) {
      for (int64_t j = 0; j < limit; ++j) x[j] = ok[j] ? x[j] : ninf;
    }
    const float mx = row_max(x.data(), limit);
    if (mx == ninf) {  // a query that may see nothing: zero output (no NaN)
      for (int64_t j = 0; j < a.S; ++j) store(o, j, 0.0f);
      lse[r] = 0.0f;
      continue;
    }
    for (int64_t j = 0; j < limit; ++j) x[j] = exp_nonpositive(x[j] - mx);
    const float sum = row_sum(x.data(), limit);
    lse[r] = mx + std::log(sum);
    const float inv = 1.0f / sum;
    if (p > 0.0) {
      keep_bits(rng, uint64_t(r), limit, keep.data());
      const float c = inv * keep_scale;
      for (int64_t j = 0; j < limit; ++j) store(o, j, keep[j] ? x[j] * c : 0.0f);
    } else {
      for (int64_t j = 0; j < limit; ++j) store(o, j, x[j] * inv);
    }
    for (int64_t j = limit; j < a.S; ++j) store(o, j, 0.0f);
  }
}

// Given the recomputed scores, lse and dD = dO @ V^T (the gradient of the dropped
// probabilities), write D (the dropped probabilities again, for dV = D^T dO) and
// dS = scale * P * (dP - rowsum(dP * P)) with dP = dD * keep / (1 - p): the gradient of the
// raw scores q @ k^T.
template <typename T>
NOINLINE void attn_bwd_rows(const T* scores, const uint8_t* allowed, const float* lse, const T* dd, T* d,
                   T* ds, AttnShape a, float scale, const Stream& rng, double p, int64_t begin,
                   int64_t end) {
  std::vector<float> prob(a.S), dprob(a.S);
  std::vector<uint8_t> keep(a.S);
  const float keep_scale = float(1.0 / (1.0 - p));
  for (int64_t r = begin; r < end; ++r) {
    const T* s = scores + r * a.S;
    const T* g = dd + r * a.S;
    T* dout = d + r * a.S;
    T* dsout = ds + r * a.S;
    const auto [limit, ok] = row_keys(a, allowed, r);
    const float l = lse[r];
    if (p > 0.0) {
      keep_bits(rng, uint64_t(r), limit, keep.data());
    } else {
      std::fill(keep.begin(), keep.begin() + limit, uint8_t(1));
    }
    for (int64_t j = 0; j < limit; ++j) {
      float pr = exp_nonpositive(std::min(load(s, j) * scale - l, 0.0f));
      prob[j] = pr;
      dprob[j] = keep[j] ? load(g, j) * keep_scale : 0.0f;
    }
    if (ok) {
      for (int64_t j = 0; j < limit; ++j) prob[j] = ok[j] ? prob[j] : 0.0f;
    }
    for (int64_t j = 0; j < limit; ++j) store(dout, j, keep[j] ? prob[j] * keep_scale : 0.0f);
    const float delta = row_dot(prob.data(), dprob.data(), limit);
    for (int64_t j = 0; j < limit; ++j) store(dsout, j, prob[j] * (dprob[j] - delta) * scale);
    for (int64_t j = limit; j < a.S; ++j) {
      store(dout, j, 0.0f);
      store(dsout, j, 0.0f);
    }
  }
}

AttnShape check_attn(const Tensor& scores, const std::optional<Tensor>& allowed, int64_t heads) {
  TORCH_CHECK(scores.dim() == 3 && scores.is_contiguous(), "scores must be contiguous (N, T, S)");
  TORCH_CHECK(scores.scalar_type() == at::kFloat || scores.scalar_type() == at::kBFloat16,
              "scores must be float32 or bfloat16");
  AttnShape a{scores.size(0), scores.size(1), scores.size(2), heads};
  TORCH_CHECK(heads > 0 && a.N % heads == 0, "heads must divide N");
  if (allowed) {
    TORCH_CHECK(allowed->scalar_type() == at::kBool && allowed->is_contiguous() &&
                    allowed->dim() == 3 && allowed->size(0) == a.N / heads &&
                    allowed->size(1) == a.T && allowed->size(2) == a.S,
                "allowed must be a contiguous bool (B, T, S) tensor");
  }
  TORCH_CHECK(a.T <= a.S, "more queries than keys");
  return a;
}

const uint8_t* mask_ptr(const std::optional<Tensor>& allowed) {
  return allowed ? reinterpret_cast<const uint8_t*>(allowed->data_ptr<bool>()) : nullptr;
}

std::tuple<Tensor, Tensor> attn_softmax_dropout(const Tensor& scores,
                                                const std::optional<Tensor>& allowed,
                                                int64_t heads, double scale, double p,
                                                int64_t seed) {
  AttnShape a = check_attn(scores, allowed, heads);
  Tensor out = at::empty_like(scores);
  Tensor lse = at::empty({a.N, a.T}, scores.options().dtype(at::kFloat));
  const Stream rng = make_stream(seed, kTagAttention, p);
  const uint8_t* ok = mask_ptr(allowed);
  for_each_dtype(scores, [&](auto zero) {
    using T = decltype(zero);
    at::parallel_for(0, a.N * a.T, 16, [&](int64_t begin, int64_t end) {
      attn_fwd_rows<T>(raw<T>(scores), ok, raw<T>(out), lse.data_ptr<float>(), a, float(scale),
                       rng, p, begin, end);
    });
  });
  return {out, lse};
}

std::tuple<Tensor, Tensor> attn_softmax_dropout_backward(const Tensor& scores,
                                                         const std::optional<Tensor>& allowed,
                                                         const Tensor& lse, const Tensor& grad,
                                                         int64_t heads, double scale, double p,
                                                         int64_t seed) {
  AttnShape a = check_attn(scores, allowed, heads);
  TORCH_CHECK(grad.sizes() == scores.sizes() && grad.scalar_type() == scores.scalar_type() &&
                  grad.is_contiguous(), "grad must match scores");
  TORCH_CHECK(lse.is_contiguous() && lse.scalar_type() == at::kFloat && lse.numel() == a.N * a.T,
              "lse must be float32 (N, T)");
  Tensor d = at::empty_like(scores);
  Tensor ds = at::empty_like(scores);
  const Stream rng = make_stream(seed, kTagAttention, p);
  const uint8_t* ok = mask_ptr(allowed);
  for_each_dtype(scores, [&](auto zero) {
    using T = decltype(zero);
    at::parallel_for(0, a.N * a.T, 16, [&](int64_t begin, int64_t end) {
      attn_bwd_rows<T>(raw<T>(scores), ok, lse.data_ptr<float>(), raw<T>(grad), raw<T>(d),
                       raw<T>(ds), a, float(scale), rng, p, begin, end);
    });
  });
  return {d, ds};
}

// ------------------------------------------------------------------------------ dropout

constexpr int64_t kDropoutBlock = 4096;

template <typename T>
NOINLINE void dropout_blocks(const T* x, T* y, int64_t n, const Stream& rng, float keep_scale,
                    int64_t begin, int64_t end) {
  alignas(64) uint8_t keep[kDropoutBlock];
  for (int64_t b = begin; b < end; ++b) {
    const int64_t start = b * kDropoutBlock;
    const int64_t m = std::min(kDropoutBlock, n - start);
    keep_bits(rng, uint64_t(b), m, keep);
    for (int64_t j = 0; j < m; ++j) store(y, start + j, keep[j] ? load(x, start + j) * keep_scale : 0.0f);
  }
}

// y = x * keep / (1 - p), the keep-bits a function of (seed, element index): the same call
// with the same seed on the gradient is the backward.
Tensor dropout_philox(const Tensor& x, double p, int64_t seed) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "dropout input must be float32 or bfloat16");
  Tensor xc = x.contiguous();
  Tensor y = at::empty_like(xc);
  const int64_t n = xc.numel();
  const Stream rng = make_stream(seed, kTagDropout, p);
  const float keep_scale = float(1.0 / (1.0 - p));
  const int64_t blocks = (n + kDropoutBlock - 1) / kDropoutBlock;
  for_each_dtype(xc, [&](auto zero) {
    using T = decltype(zero);
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      dropout_blocks<T>(raw<T>(xc), raw<T>(y), n, rng, keep_scale, begin, end);
    });
  });
  return y;
}

// ------------------------------------------------------------------------------ cross-entropy

// For each row of logits (n, V): the loss logsumexp(row) - row[target] (0 where the target is
// -100), and the row overwritten with its gradient softmax(row) - one_hot(target) (zeros where
// ignored). One read to find the maximum, one for the sum, one write: the (n, V) logits never
// round-trip through float32 copies.
template <typename T>
NOINLINE void cross_entropy_rows(T* logits, const int64_t* targets, float* loss, int64_t V, int64_t begin,
                        int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    T* x = logits + r * V;
    const int64_t t = targets[r];
    if (t == -100) {
      loss[r] = 0.0f;
      for (int64_t j = 0; j < V; ++j) store(x, j, 0.0f);
      continue;
    }
    const float mx = row_max(x, V);
    const float sum = row_sum_exp(x, V, mx);
    const float lse = mx + std::log(sum);
    loss[r] = lse - load(x, t);
    const float inv = 1.0f / sum;
    for (int64_t j = 0; j < V; ++j) store(x, j, exp_nonpositive(load(x, j) - mx) * inv);
    store(x, t, load(x, t) - 1.0f);
  }
}

Tensor cross_entropy_grad_(Tensor& logits, const Tensor& targets) {
  TORCH_CHECK(logits.dim() == 2 && logits.is_contiguous(), "logits must be contiguous (n, V)");
  TORCH_CHECK(logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kBFloat16,
              "logits must be float32 or bfloat16");
  TORCH_CHECK(targets.scalar_type() == at::kLong && targets.is_contiguous() &&
                  targets.numel() == logits.size(0), "targets must be int64 (n,)");
  const int64_t n = logits.size(0), V = logits.size(1);
  const int64_t* t = targets.data_ptr<int64_t>();
  for (int64_t r = 0; r < n; ++r) {
    TORCH_CHECK(t[r] == -100 || (t[r] >= 0 && t[r] < V), "target ", t[r], " out of range");
  }
  Tensor loss = at::empty({n}, logits.options().dtype(at::kFloat));
  for_each_dtype(logits, [&](auto zero) {
    using T = decltype(zero);
    at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
      cross_entropy_rows<T>(raw<T>(logits), t, loss.data_ptr<float>(), V, begin, end);
    });
  });
  return loss;
}

// ------------------------------------------------------------------------------ GELU (tanh)

// GPT-2's GELU, 0.5 x (1 + tanh(u)) with u = sqrt(2/pi) (x + 0.044715 x^3), and its derivative.
// tanh(|u|) = (1 - t) / (1 + t) with t = exp(-2|u|) <= 1, so the one exp stays in range.
constexpr float kGeluC = 0.7978845608028654f, kGeluA = 0.044715f;

inline float tanh_approx(float u) {
  float t = exp_nonpositive(-2.0f * std::fabs(u));
  float th = (1.0f - t) / (1.0f + t);
  return u < 0.0f ? -th : th;
}

template <typename T>
NOINLINE void gelu_range(const T* __restrict__ x, T* __restrict__ y, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    float v = load(x, i);
    float th = tanh_approx(kGeluC * (v + kGeluA * v * v * v));
    store(y, i, 0.5f * v * (1.0f + th));
  }
}

template <typename T>
NOINLINE void gelu_backward_range(const T* __restrict__ g, const T* __restrict__ x, T* __restrict__ dx, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    float v = load(x, i);
    float th = tanh_approx(kGeluC * (v + kGeluA * v * v * v));
    float du = kGeluC * (1.0f + 3.0f * kGeluA * v * v);
    float d = 0.5f * (1.0f + th) + 0.5f * v * (1.0f - th * th) * du;
    store(dx, i, load(g, i) * d);
  }
}

Tensor gelu_tanh(const Tensor& x) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "gelu input must be float32 or bfloat16");
  Tensor xc = x.contiguous();
  Tensor y = at::empty_like(xc);
  for_each_dtype(xc, [&](auto zero) {
    using T = decltype(zero);
    at::parallel_for(0, xc.numel(), 8192, [&](int64_t begin, int64_t end) {
      gelu_range(raw<T>(xc), raw<T>(y), begin, end);
    });
  });
  return y;
}

Tensor gelu_tanh_backward(const Tensor& grad, const Tensor& x) {
  TORCH_CHECK(grad.scalar_type() == x.scalar_type() && grad.sizes() == x.sizes(),
              "gelu grad must match its input");
  Tensor gc = grad.contiguous(), xc = x.contiguous();
  Tensor dx = at::empty_like(xc);
  for_each_dtype(xc, [&](auto zero) {
    using T = decltype(zero);
    at::parallel_for(0, xc.numel(), 8192, [&](int64_t begin, int64_t end) {
      gelu_backward_range(raw<T>(gc), raw<T>(xc), raw<T>(dx), begin, end);
    });
  });
  return dx;
}

}  // namespace

// Schemas with names (and the in-place write of cross_entropy_grad_ declared), CPU kernels; the
// shape-only ("fake") versions that torch.compile traces with are registered in native.py.
TORCH_LIBRARY(gpt2tune, m) {
  m.def("attn_softmax_dropout(Tensor scores, Tensor? allowed, int heads, float scale, float p, "
        "int seed) -> (Tensor, Tensor)");
  m.def("attn_softmax_dropout_backward(Tensor scores, Tensor? allowed, Tensor lse, Tensor grad, "
        "int heads, float scale, float p, int seed) -> (Tensor, Tensor)");
  m.def("dropout_philox(Tensor x, float p, int seed) -> Tensor");
  m.def("cross_entropy_grad_(Tensor(a!) logits, Tensor targets) -> Tensor");
  m.def("gelu_tanh(Tensor x) -> Tensor");
  m.def("gelu_tanh_backward(Tensor grad, Tensor x) -> Tensor");
}

TORCH_LIBRARY_IMPL(gpt2tune, CPU, m) {
  m.impl("attn_softmax_dropout", &attn_softmax_dropout);
  m.impl("attn_softmax_dropout_backward", &attn_softmax_dropout_backward);
  m.impl("dropout_philox", &dropout_philox);
  m.impl("cross_entropy_grad_", &cross_entropy_grad_);
  m.impl("gelu_tanh", &gelu_tanh);
  m.impl("gelu_tanh_backward", &gelu_tanh_backward);
}
