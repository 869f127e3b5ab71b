// Per-row sampling kernels on float32 logits (no torch dependency).
//
// sample_row implements step 1-5 of the `sample` semantics in dbert_kernels/reference.py for one
// revealed row. Its hot loops are compiled for several x86-64 levels (target clones, picked at
// load time), so the library runs on any x86-64 and uses AVX-512 / AVX2 where present.
#pragma once

#include <cstdint>

#include "philox.h"

namespace dbert_native {

// The fields of dbert_kernels.params.SamplingParams (banned is passed separately), plus the key.
struct SampleParams {
  float inv_t;        // inv_temperature: float32(1 / T), 1 when greedy
  bool greedy;        // the token is the argmax
  int64_t top_k;      // 0: off
  float top_p;        // >= 1: off
  bool with_entropy;  // compute RowResult::entropy
  bool with_margin;   // compute RowResult::margin
  Key key;
  uint32_t offset;
};

// What sample_row writes for one row (token -1 and NaN elsewhere when the row cannot be sampled).
struct RowResult {
  int64_t token;
  float confidence;
  float entropy;  // nats, of the filtered distribution (with_entropy)
  float margin;   // top-1 minus top-2 probability (with_margin)
};

// Scratch buffers of one worker thread: idx, vals and work hold V entries, hist kScratchHistBins
// (four copies of the 2048-bin top-p histogram).
constexpr int kScratchHistBins = 4 * 2048;
struct RowScratch {
  int32_t* idx;
  float* vals;
  float* work;
  double* hist;
};

// What sample_row found: kOk, or why the row cannot be sampled.
enum class RowStatus : uint8_t { kOk = 0, kNonFinite = 1, kNothingAllowed = 2 };

// Sample one row: x [V] float32 logits, banned [V] (nonzero = banned), row = Philox row id.
// Checks the row as it reads it: a NaN or +inf allowed logit, or no finite allowed logit, is
// reported (and the result is token -1, NaN elsewhere).
RowStatus sample_row(const float* x, const uint8_t* banned, int64_t vocab, const SampleParams& p,
                     uint32_t row, RowScratch scratch, RowResult* out);

// bfloat16 bits -> float32 (exact).
void bf16_to_float(const uint16_t* in, float* out, int64_t n);

// The instruction-set level whose kernels were picked at load time.
const char* isa_level();

}  // namespace dbert_native
