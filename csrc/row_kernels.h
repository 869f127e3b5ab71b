// Per-row sampling kernels on float32 logits (no torch dependency).
//
// sample_row implements step 1-5 of the `sample` semantics in dbert_kernels/reference.py for one
// revealed row. Its hot loops are compiled for several x86-64 levels (target clones, picked at
// load time), so the library runs on any x86-64 and uses AVX-512 / AVX2 where present.
#pragma once

#include <cstdint>

#include "philox.h"

namespace dbert_native {

struct SampleParams {
  float inv_t;     // float32(1 / T_eff)
  bool greedy;     // temperature == 0
  int64_t top_k;   // 0: off
  float top_p;     // >= 1: off
  Key key;
  uint32_t offset;
};

// Scratch buffers of one worker thread: idx, vals and work hold V entries, hist kTopPBins.
constexpr int kScratchHistBins = 2048;
struct RowScratch {
  int32_t* idx;
  float* vals;
  float* work;
  double* hist;
};

// What sample_row found: kOk, or why the row cannot be sampled (then token/confidence are unset).
enum class RowStatus : uint8_t { kOk = 0, kNonFinite = 1, kNothingAllowed = 2 };

// Sample one row: x [V] float32 logits, banned [V] (nonzero = banned), row = Philox row id.
// Checks the row as it reads it: a NaN or +inf logit, or no finite allowed logit, is reported.
RowStatus sample_row(const float* x, const uint8_t* banned, int64_t vocab, const SampleParams& p,
                     uint32_t row, RowScratch scratch, int64_t* token, float* confidence);

// bfloat16 bits -> float32 (exact).
void bf16_to_float(const uint16_t* in, float* out, int64_t n);

// The instruction-set level whose kernels were picked at load time.
const char* isa_level();

}  // namespace dbert_native
