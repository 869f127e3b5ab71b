// Per-row sampling kernels (see row_kernels.h). Semantics: dbert_kernels/reference.py `sample`.
//
// One row is read a small, fixed number of times (max; top-k threshold; top-p weights; the fused
// pass that accumulates the softmax normaliser and does Gumbel-max), all in L1/L2 once it is
// loaded. Gumbel-max needs the Philox words of every kept id that can still beat the running best
// (the AVX2 level skips blocks of ids with s_i + max g < best, see row_kernels_avx2.inc), but the
// two logarithms of the exact Gumbel value only for ids that pass a second test: since
// E = -log(1 - v) >= v, an id whose uniform v already satisfies v >= exp(s_i - best) cannot win,
// and that bound needs only exp(s_i - s_max), which the normaliser computes anyway. The exact
// score (same float32 operation order as the reference) is computed for the few ids that pass
// (about log V per row).
#include "row_kernels.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(DBERT_NO_ISA_VARIANTS)
#define DBERT_X86_VARIANTS 1
#include <immintrin.h>
#endif


namespace dbert_native {
namespace {

constexpr int L = DBERT_LANES;
constexpr float kInf = INFINITY;
// k up to this uses a streaming selection for the top-k threshold (a min-heap, or at the AVX2
// level a buffer of the values above a running threshold), above it nth_element on a copy.
constexpr int64_t kSmallTopK = 512;

// GCC/Clang vector extensions: one value per lane of a DBERT_LANES-wide block; the compiler maps
// them onto the registers of the level being compiled (4 x SSE2, 2 x AVX2 or 1 x AVX-512).
typedef float f32v __attribute__((vector_size(4 * L)));
typedef int32_t i32v __attribute__((vector_size(4 * L)));
typedef uint32_t u32v __attribute__((vector_size(4 * L)));
typedef uint64_t u64v __attribute__((vector_size(8 * L)));
typedef double f64v __attribute__((vector_size(8 * L)));
typedef uint8_t u8v __attribute__((vector_size(L)));

struct ScanResult {
  double z;       // sum of the weights exp_weight(s_i) over the kept ids
  int64_t token;  // Gumbel-max token (when sampling)
  double ws;      // sum of w_i * s_i (with stats)
  float second;   // largest weight among the kept ids other than the argmax (with stats)
};

struct ScanArgs {
  float m;      // the row's largest allowed logit
  float inv_t;
  bool sample;  // Gumbel-max (else greedy: only the normaliser)
  bool stats;   // entropy and margin sums
  uint32_t argmax;
  float min_weight;  // ids with a smaller weight exp_weight(s) are dropped (top-p); 0 keeps all
  Key key;
  uint32_t row;
  uint32_t offset;
};

// The hot loops of one instruction-set level.
struct Kernels {
  float (*row_argmax)(const float*, const uint8_t*, int64_t, int64_t*, bool*);
  float (*kth_largest_small)(const float*, const uint8_t*, int64_t, int64_t, float*);
  int64_t (*gather_kept)(const float*, const uint8_t*, int64_t, float, int32_t*);
  double (*exp_values)(const float*, const uint8_t*, const int32_t*, int64_t, float, float, float*);
  ScanResult (*scan)(const float*, const uint8_t*, const int32_t*, int64_t, const ScanArgs&);
  float (*exp_one)(float);
  void (*bf16_to_float)(const uint16_t*, float*, int64_t);
};

}  // namespace

#if DBERT_X86_VARIANTS
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4")
namespace isa_v4 {
#define DBERT_ISA 4
#include "row_kernels_impl.inc"
#undef DBERT_ISA
}  // namespace isa_v4
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
namespace isa_v3 {
#define DBERT_ISA 3
#include "row_kernels_impl.inc"
#undef DBERT_ISA
}  // namespace isa_v3
#pragma GCC pop_options
#endif

namespace isa_base {
#define DBERT_ISA 0
#include "row_kernels_impl.inc"
#undef DBERT_ISA
}  // namespace isa_base

namespace {

// The best level this CPU runs; DBERT_NATIVE_ISA=baseline|x86-64-v3|x86-64-v4 caps it (tests run
// every level on one machine with it).
const Kernels& pick_kernels() {
  const char* cap = std::getenv("DBERT_NATIVE_ISA");
  const std::string want = cap == nullptr ? "" : cap;
  if (want == "baseline") return isa_base::kKernels;
#if DBERT_X86_VARIANTS
  __builtin_cpu_init();
  if (want != "x86-64-v3" && __builtin_cpu_supports("x86-64-v4")) return isa_v4::kKernels;
  if (__builtin_cpu_supports("x86-64-v3")) return isa_v3::kKernels;
#endif
  return isa_base::kKernels;
}

const Kernels& K = pick_kernels();

float kth_largest(const float* x, const uint8_t* banned, int64_t n, int64_t k, float* work) {
  if (k <= kSmallTopK) return K.kth_largest_small(x, banned, n, k, work);
  for (int64_t j = 0; j < n; ++j) work[j] = banned[j] ? -kInf : x[j];
  std::nth_element(work, work + (k - 1), work + n, std::greater<float>());
  return work[k - 1];
}

// Radix levels of the top-p threshold search: bins over the bit pattern of the (non-negative)
// float weights, whose order is the order of the values.
constexpr int kTopPBins = 2048;
constexpr int kTopPCopies = kScratchHistBins / kTopPBins;
constexpr int kTopPShift1 = 20;  // sign, exponent and 3 mantissa bits: 1/8-octave bins
constexpr int kTopPShift2 = 9;   // 11 more mantissa bits
constexpr uint32_t kTopPMask = kTopPBins - 1;

DBERT_INLINE uint32_t float_bits(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  return bits;
}

// Mass histogram of w[0..n) over bins (bits >> shift) & mask; returns the highest bin b whose
// mass with everything above it reaches target (with above: the mass above w), or -1 if none,
// and the mass strictly above that bin in *above. Four interleaved copies of the histogram, so
// that runs of equal bins do not make each addition wait for the previous one.
int boundary_bin(const float* w, int64_t n, int shift, double target, double* above, double* hist) {
  std::fill(hist, hist + kTopPCopies * kTopPBins, 0.0);
  double* h0 = hist;
  double* h1 = hist + kTopPBins;
  double* h2 = hist + 2 * kTopPBins;
  double* h3 = hist + 3 * kTopPBins;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    h0[(float_bits(w[i]) >> shift) & kTopPMask] += w[i];
    h1[(float_bits(w[i + 1]) >> shift) & kTopPMask] += w[i + 1];
    h2[(float_bits(w[i + 2]) >> shift) & kTopPMask] += w[i + 2];
    h3[(float_bits(w[i + 3]) >> shift) & kTopPMask] += w[i + 3];
  }
  for (; i < n; ++i) h0[(float_bits(w[i]) >> shift) & kTopPMask] += w[i];
  double acc = *above;
  for (int b = kTopPBins - 1; b >= 0; --b) {
    const double mass = (h0[b] + h1[b]) + (h2[b] + h3[b]);
    if (acc + mass >= target) {
      *above = acc;
      return b;
    }
    acc += mass;
  }
  return -1;
}

// The smallest kept weight of the top-p rule on unnormalised weights w[0..n) (w >= 0): w_i is
// kept iff the sum of the weights strictly greater than w_i is < target (= top_p * sum w), so
// "keep w_i >= threshold". Two radix-histogram passes narrow the boundary down to the ids that
// share the top 23 bits of the boundary value, which are then sorted (usually a handful).
float top_p_threshold(const float* w, int64_t n, double target, float* work, double* hist) {
  double above = 0.0;
  const int b1 = boundary_bin(w, n, kTopPShift1, target, &above, hist);
  if (b1 < 0) return *std::min_element(w, w + n);  // (rounding) everything is kept
  int64_t m = 0;
  for (int64_t i = 0; i < n; ++i) {
    work[m] = w[i];
    m += static_cast<int>(float_bits(w[i]) >> kTopPShift1) == b1;
  }
  const double above1 = above;
  const int b2 = boundary_bin(work, m, kTopPShift2, target, &above, hist);
  if (b2 < 0) {
    above = above1;
    return *std::min_element(work, work + m);
  }
  int64_t c = 0;
  for (int64_t i = 0; i < m; ++i) {
    work[c] = work[i];
    c += static_cast<int>((float_bits(work[i]) >> kTopPShift2) & kTopPMask) == b2;
  }
  std::sort(work, work + c, std::greater<float>());
  float threshold = work[0];
  for (int64_t i = 0; i < c;) {
    if (!(above < target)) break;
    threshold = work[i];
    int64_t j = i;
    for (; j < c && work[j] == work[i]; ++j) above += work[j];
    i = j;
  }
  return threshold;
}

}  // namespace

const char* isa_level() {
#if DBERT_X86_VARIANTS
  if (&K == &isa_v4::kKernels) return "x86-64-v4 (AVX-512)";
  if (&K == &isa_v3::kKernels) return "x86-64-v3 (AVX2)";
  return "x86-64 baseline";
#else
  return "portable";
#endif
}

void bf16_to_float(const uint16_t* in, float* out, int64_t n) { K.bf16_to_float(in, out, n); }

RowStatus sample_row(const float* x, const uint8_t* banned, int64_t vocab, const SampleParams& p,
                     uint32_t row, RowScratch scratch, RowResult* out) {
  int64_t argmax = 0;
  bool nonfinite = false;
  const float m = K.row_argmax(x, banned, vocab, &argmax, &nonfinite);
  if (nonfinite || !(m > -kInf)) {
    *out = {-1, NAN, NAN, NAN};
    return nonfinite ? RowStatus::kNonFinite : RowStatus::kNothingAllowed;
  }
  const int32_t* list = nullptr;
  int64_t n = vocab;
  if (p.top_k > 0 && p.top_k < vocab) {
    const float kth = kth_largest(x, banned, vocab, p.top_k, scratch.work);
    n = K.gather_kept(x, banned, vocab, kth, scratch.idx);
    list = scratch.idx;
  }
  float min_weight = 0.0f;
  if (p.top_p < 1.0f) {
    // The weights of the kept ids (of every id, 0 at the banned ones, without top-k), and the
    // smallest weight that top-p keeps; the fused pass below drops the ids under it.
    const double z = K.exp_values(x, banned, list, n, p.inv_t, m, scratch.vals);
    min_weight = top_p_threshold(scratch.vals, n, static_cast<double>(p.top_p) * z, scratch.work, scratch.hist);
  }
  const bool stats = p.with_entropy || p.with_margin;
  const ScanArgs args{m, p.inv_t, !p.greedy, stats, static_cast<uint32_t>(argmax), min_weight, p.key, row, p.offset};
  const ScanResult res = K.scan(x, banned, list, n, args);
  const int64_t tok = p.greedy || res.token < 0 ? argmax : res.token;
  // The token's weight, as in the scan: exp_weight((x - m) * inv_t) in float32.
  const double w_tok = K.exp_one((x[tok] - m) * p.inv_t);
  out->token = tok;
  out->confidence = static_cast<float>(w_tok / res.z);
  out->entropy = stats ? static_cast<float>(std::log(res.z) - res.ws / res.z) : 0.0f;
  // The argmax is always kept and its weight is exp_weight(0) = 1.
  out->margin = stats ? static_cast<float>((1.0 - static_cast<double>(res.second)) / res.z) : 0.0f;
  return RowStatus::kOk;
}

}  // namespace dbert_native
