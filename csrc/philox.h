// Counter-based random numbers, bit-identical to dbert_kernels/random.py.
//
// Philox4x32-10 with key (seed lo32, seed hi32) and counter (column, row, stream, offset), and
// the two float conversions of random.py. Scalar versions; the vectorised block
// versions live in row_kernels_impl.inc.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__GNUC__)
#define DBERT_INLINE inline __attribute__((always_inline))
#else
#define DBERT_INLINE inline
#endif

namespace dbert_native {

constexpr int DBERT_LANES = 16;

constexpr uint32_t kRoundA = 0xD2511F53u;
constexpr uint32_t kRoundB = 0xCD9E8D57u;
constexpr uint32_t kKeyA = 0x9E3779B9u;
constexpr uint32_t kKeyB = 0xBB67AE85u;
constexpr int kRounds = 10;

// Stream ids (third counter word): the values of dbert_kernels/random.py's STREAM_* (a test checks).
constexpr uint32_t kStreamMask = 0;
constexpr uint32_t kStreamSample = 1;
constexpr uint32_t kStreamUnmask = 2;
constexpr uint32_t kStreamConfidence = 3;

constexpr float kExpSeriesCutoff = 0.015625f;      // 2**-6
constexpr float kOneMinusUlp = 0.99999994039535522f;  // 1 - 2**-24

struct Key {
  uint32_t k0, k1;
};

struct Words {
  uint32_t w0, w1, w2, w3;
};

DBERT_INLINE Words philox(Key key, uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3) {
  uint32_t k0 = key.k0, k1 = key.k1;
  for (int r = 0; r < kRounds; ++r) {
    const uint64_t pb = static_cast<uint64_t>(kRoundB) * c2;
    const uint64_t pa = static_cast<uint64_t>(kRoundA) * c0;
    const uint32_t n0 = static_cast<uint32_t>(pb >> 32) ^ c1 ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(pa >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(pb);
    c3 = static_cast<uint32_t>(pa);
    c0 = n0;
    c2 = n2;
    k0 += kKeyA;
    k1 += kKeyB;
  }
  return {c0, c1, c2, c3};
}

// uniform_from_bits: ((w >> 9) + 0.5) * 2**-23, exact in float32.
DBERT_INLINE float uniform_from_bits(uint32_t w) {
  return (static_cast<float>(w >> 9) + 0.5f) * 1.1920928955078125e-07f;
}

// exponential_from_bits, with the float32 operation order of random.py (no contraction:
// this file is compiled with -ffp-contract=off).
DBERT_INLINE float exponential_from_bits(uint32_t hi, uint32_t lo) {
  const float a = static_cast<float>(hi >> 9) * 1.1920928955078125e-07f;        // 2**-23
  const float b = (static_cast<float>(lo >> 9) + 0.5f) * 1.4210854715202004e-14f;  // 2**-46
  float v = a + b;
  if (v > kOneMinusUlp) v = kOneMinusUlp;
  if (v < kExpSeriesCutoff) {
    const float third = static_cast<float>(1.0 / 3.0);
    const float fifth = static_cast<float>(0.2);
    return v * (1.0f + v * (0.5f + v * (third + v * (0.25f + v * fifth))));
  }
  return -logf(1.0f - v);
}

// Gumbel noise g = -log(E) of one (column, row, stream, offset) counter.
DBERT_INLINE float gumbel(Key key, uint32_t col, uint32_t row, uint32_t stream, uint32_t offset) {
  const Words w = philox(key, col, row, stream, offset);
  return -logf(exponential_from_bits(w.w0, w.w1));
}

}  // namespace dbert_native
