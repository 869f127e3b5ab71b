// The three ops of dbert_kernels as PyTorch custom ops for CPU tensors (namespace dbert_native).
//
// Semantics, argument meanings and the random stream are those of dbert_kernels/reference.py;
// the Python wrapper dbert_kernels/native.py validates nothing itself (dbert_kernels.ops does)
// and calls these with already checked, contiguous-enough tensors. Threads run across rows
// (parallel_rows below); each revealed row of logits is read by one thread only.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <thread>
#include <cmath>
#include <numeric>
#include <string>
#include <tuple>
#include <vector>

#include "philox.h"
#include "row_kernels.h"

namespace dbert_native {
namespace {

using at::Tensor;

// Upper clip of the code-form spindle keep probability: dbert_kernels.schedules.SPINDLE_CODE_CLIP
// (a test checks that they agree).
constexpr float kSpindleCodeClip = 0.999f;

// The Philox key and offset from rng = [seed bit pattern, offset] (int64 [2], see
// dbert_kernels.random.rng_tensor).
struct Rng {
  Key key;
  uint32_t offset;
};

Rng read_rng(const Tensor& rng) {
  TORCH_CHECK(rng.numel() == 2 && rng.scalar_type() == at::kLong,
              "dbert_native: rng must be an int64 [2] tensor (seed bits, offset)");
  const Tensor r = rng.to(at::kCPU).contiguous();
  const int64_t* p = r.data_ptr<int64_t>();
  const uint64_t bits = static_cast<uint64_t>(p[0]);
  return {{static_cast<uint32_t>(bits), static_cast<uint32_t>(bits >> 32)}, static_cast<uint32_t>(p[1])};
}

// Runs fn(i) for i in [0, n) on up to at::get_num_threads() threads (this one included), handing
// the indices out one at a time from a shared counter, so that a thread slowed down by another
// process on the machine does not hold up the others. Plain std::thread: at::parallel_for's
// OpenMP body is a header template that would need this library built with -fopenmp against
// torch's own OpenMP runtime. `work` (elements touched) below a threshold runs serially.
// make_state() builds each thread's scratch; fn(state, i) must not throw.
template <typename MakeState, typename Fn>
void parallel_rows(int64_t n, int64_t work, MakeState make_state, Fn fn) {
  constexpr int64_t kSerialWork = int64_t{1} << 18;
  const int64_t threads = work < kSerialWork ? 1 : std::min<int64_t>(at::get_num_threads(), n);
  std::atomic<int64_t> next{0};
  auto worker = [&]() {
    auto state = make_state();
    for (int64_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) fn(state, i);
  };
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < threads; ++t) pool.emplace_back(worker);
  worker();
  for (auto& th : pool) th.join();
}

void check_cpu(const Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "dbert_native: ", name, " must be a CPU tensor (got ", t.device(),
              "); use backend='auto' or 'triton' for CUDA tensors");
}

std::tuple<Tensor, Tensor> spindle_mask(const Tensor& ids, const Tensor& base, const Tensor& amp,
                                        const Tensor& info, const Tensor& protected_ids,
                                        const Tensor& rng, int64_t form, int64_t mask_id) {
  for (const Tensor* t : {&ids, &base, &amp, &info, &protected_ids}) check_cpu(*t, "every input");
  TORCH_CHECK(ids.dim() == 2, "dbert_native.spindle_mask: ids must be [B, L]");
  TORCH_CHECK(form >= 0 && form <= 2, "dbert_native.spindle_mask: form must be 0 (none), 1 (code), 2 (paper)");
  const Tensor ids64 = ids.to(at::kLong).contiguous();
  const Tensor base_f = base.to(at::kFloat).contiguous();
  const Tensor amp_f = amp.to(at::kFloat).contiguous();
  const Tensor info_f = info.to(at::kFloat).contiguous();
  const Tensor prot = protected_ids.to(at::kBool).contiguous();
  const int64_t batch = ids.size(0), length = ids.size(1);
  Tensor masked = at::zeros({batch, length}, ids.options().dtype(at::kBool));
  const int64_t* id_p = ids64.data_ptr<int64_t>();
  const float* base_p = base_f.data_ptr<float>();
  const float* amp_p = amp_f.data_ptr<float>();
  const float* info_p = info_f.data_ptr<float>();
  const bool* prot_p = prot.data_ptr<bool>();
  bool* out_p = masked.data_ptr<bool>();
  const Rng rn = read_rng(rng);
  const Key key = rn.key;
  const uint32_t offset = rn.offset;
  parallel_rows(batch, batch * length, [] { return 0; }, [&](int&, int64_t b) {
    {
      const int64_t* row = id_p + b * length;
      double sum_w = 0.0;
      int64_t count = 0;
      for (int64_t l = 0; l < length; ++l) {
        if (!prot_p[row[l]]) {
          sum_w += info_p[row[l]];
          ++count;
        }
      }
      const float mean = static_cast<float>(sum_w) / static_cast<float>(std::max<int64_t>(count, 1));
      const float bs = base_p[b], am = amp_p[b];
      for (int64_t l = 0; l < length; ++l) {
        if (prot_p[row[l]]) continue;
        const float w = info_p[row[l]];
        float keep = bs;
        if (form == 1) {
          keep = std::min(std::max(bs + am * (w - mean), 0.0f), kSpindleCodeClip);
        } else if (form == 2) {
          keep = std::min(std::max(bs - am * (1.0f - mean / w), 0.0f), 1.0f);
        }
        const Words wd = philox(key, static_cast<uint32_t>(l), static_cast<uint32_t>(b), kStreamMask,
                                static_cast<uint32_t>(offset));
        out_p[b * length + l] = uniform_from_bits(wd.w0) >= keep;
      }
    }
  });
  Tensor noised = at::where(masked, at::full_like(ids, mask_id), ids);
  return {noised, masked};
}

// Logits row r as float32: a pointer into the tensor (fp32) or a converted copy in `buf`.
template <typename scalar_t>
const float* row_as_float(const scalar_t* data, int64_t stride, int64_t r, int64_t vocab, float* buf) {
  const scalar_t* src = data + r * stride;
  if constexpr (std::is_same_v<scalar_t, float>) {
    return src;
  } else if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    bf16_to_float(reinterpret_cast<const uint16_t*>(src), buf, vocab);
    return buf;
  } else {
    for (int64_t j = 0; j < vocab; ++j) buf[j] = static_cast<float>(src[j]);
    return buf;
  }
}

std::tuple<Tensor, Tensor, Tensor, Tensor> sample(const Tensor& logits, const std::optional<Tensor>& ids,
                                                  const Tensor& unmask_prob, const Tensor& banned,
                                                  const Tensor& row_index, const Tensor& rng, int64_t mask_id,
                                                  double inv_temperature, bool greedy, int64_t top_k,
                                                  double top_p, bool with_entropy, bool with_margin) {
  check_cpu(logits, "logits");
  TORCH_CHECK(logits.dim() == 2, "dbert_native.sample: logits must be [R, V]");
  const auto dtype = logits.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
              "dbert_native.sample: logits must be float32, bfloat16 or float16");
  const int64_t n_rows = logits.size(0), vocab = logits.size(1);
  TORCH_CHECK(vocab < (int64_t{1} << 31), "dbert_native.sample: vocabulary too large");
  TORCH_CHECK(banned.numel() == vocab && unmask_prob.numel() == n_rows && row_index.numel() == n_rows,
              "dbert_native.sample: banned must be [V], unmask_prob and row_index [R]");
  const Tensor x = logits.size(1) > 1 && logits.stride(1) != 1 ? logits.contiguous() : logits;
  const int64_t stride = x.stride(0);
  const Tensor prob = unmask_prob.to(at::kFloat).contiguous();
  const Tensor ban = banned.to(at::kBool).contiguous();
  const Tensor rows = row_index.to(at::kLong).contiguous();

  Tensor tokens, conf;
  if (ids.has_value()) {
    check_cpu(*ids, "ids");
    tokens = ids->to(at::kLong).contiguous().clone();
  } else {
    tokens = at::full({n_rows}, mask_id, logits.options().dtype(at::kLong));
  }
  int64_t* tok_p = tokens.data_ptr<int64_t>();
  conf = at::empty({n_rows}, logits.options().dtype(at::kFloat));
  float* conf_p = conf.data_ptr<float>();
  const float* prob_p = prob.data_ptr<float>();
  const int64_t* row_p = rows.data_ptr<int64_t>();
  const Rng rn = read_rng(rng);
  const Key key = rn.key;
  const uint32_t off = rn.offset;
  Tensor entropy = at::empty({with_entropy ? n_rows : 0}, logits.options().dtype(at::kFloat));
  Tensor margin = at::empty({with_margin ? n_rows : 0}, logits.options().dtype(at::kFloat));
  float* ent_p = with_entropy ? entropy.data_ptr<float>() : nullptr;
  float* mar_p = with_margin ? margin.data_ptr<float>() : nullptr;

  // The absorbing decision (cheap, serial), then the revealed rows in parallel.
  std::vector<int64_t> revealed;
  for (int64_t r = 0; r < n_rows; ++r) {
    const bool is_masked = tok_p[r] == mask_id;
    conf_p[r] = is_masked ? 0.0f : 1.0f;
    if (ent_p != nullptr) ent_p[r] = is_masked ? NAN : 0.0f;
    if (mar_p != nullptr) mar_p[r] = is_masked ? NAN : 1.0f;
    if (!is_masked) continue;
    const Words w = philox(key, 0, static_cast<uint32_t>(row_p[r]), kStreamUnmask, off);
    if (uniform_from_bits(w.w0) < prob_p[r]) revealed.push_back(r);
  }
  if (revealed.empty()) return {tokens, conf, entropy, margin};

  SampleParams params;
  params.greedy = greedy;
  params.inv_t = static_cast<float>(inv_temperature);
  params.top_k = top_k;
  params.top_p = static_cast<float>(top_p);
  params.with_entropy = with_entropy;
  params.with_margin = with_margin;
  params.key = key;
  params.offset = off;
  const uint8_t* ban_p = reinterpret_cast<const uint8_t*>(ban.data_ptr<bool>());
  const int64_t n_rev = static_cast<int64_t>(revealed.size());

  auto run = [&](auto tag) {
    using scalar_t = decltype(tag);
    const scalar_t* data = x.data_ptr<scalar_t>();
    struct Scratch {
      std::vector<int32_t> idx;
      std::vector<float> vals, work, buf;
      std::vector<double> hist;
    };
    auto make_scratch = [&]() {
      return Scratch{std::vector<int32_t>(vocab), std::vector<float>(vocab), std::vector<float>(vocab),
                     std::vector<float>(std::is_same_v<scalar_t, float> ? 0 : vocab),
                     std::vector<double>(kScratchHistBins)};
    };
    parallel_rows(n_rev, n_rev * vocab, make_scratch, [&](Scratch& sc, int64_t i) {
      const RowScratch scratch{sc.idx.data(), sc.vals.data(), sc.work.data(), sc.hist.data()};
      const int64_t r = revealed[i];
      const float* xr = row_as_float<scalar_t>(data, stride, r, vocab, sc.buf.data());
      RowResult res;
      sample_row(xr, ban_p, vocab, params, static_cast<uint32_t>(row_p[r]), scratch, &res);
      tok_p[r] = res.token;
      conf_p[r] = res.confidence;
      if (ent_p != nullptr) ent_p[r] = res.entropy;
      if (mar_p != nullptr) mar_p[r] = res.margin;
    });
  };
  if (dtype == at::kFloat) {
    run(float{});
  } else if (dtype == at::kBFloat16) {
    run(c10::BFloat16{});
  } else {
    run(c10::Half{});
  }
  // Rows that cannot be sampled hold token -1 and NaN (the caller decides whether that is an error).
  return {tokens, conf, entropy, margin};
}

Tensor topk_unmask(const Tensor& ids, const Tensor& candidates, const Tensor& confidence,
                   const Tensor& k, const Tensor& rng, int64_t mask_id, double gumbel_temperature) {
  for (const Tensor* t : {&ids, &candidates, &confidence, &k}) check_cpu(*t, "every input");
  TORCH_CHECK(ids.dim() == 2 && candidates.sizes() == ids.sizes() && confidence.sizes() == ids.sizes(),
              "dbert_native.topk_unmask: ids, candidates and confidence must share one [B, L] shape");
  const int64_t batch = ids.size(0), length = ids.size(1);
  TORCH_CHECK(k.numel() == batch, "dbert_native.topk_unmask: k must be [B]");
  Tensor out = ids.to(at::kLong).contiguous().clone();
  const Tensor cand = candidates.to(at::kLong).contiguous();
  const Tensor score_in = confidence.to(at::kFloat).contiguous();
  const Tensor k64 = k.to(at::kLong).contiguous();
  int64_t* out_p = out.data_ptr<int64_t>();
  const int64_t* cand_p = cand.data_ptr<int64_t>();
  const float* conf_p = score_in.data_ptr<float>();
  const int64_t* k_p = k64.data_ptr<int64_t>();
  const Rng rn = read_rng(rng);
  const Key key = rn.key;
  const uint32_t offset = rn.offset;
  const float gt = static_cast<float>(gumbel_temperature);
  struct RowBuffers {
    std::vector<int64_t> pos;
    std::vector<float> score;
  };
  auto make_buffers = [&]() { return RowBuffers{{}, std::vector<float>(length)}; };
  parallel_rows(batch, batch * length, make_buffers, [&](RowBuffers& buffers, int64_t b) {
    std::vector<int64_t>& pos = buffers.pos;
    std::vector<float>& score = buffers.score;
    {
      int64_t* row = out_p + b * length;
      pos.clear();
      for (int64_t l = 0; l < length; ++l) {
        if (row[l] != mask_id) continue;
        pos.push_back(l);
        float s = conf_p[b * length + l];
        if (gumbel_temperature > 0.0) {
          const float g = gumbel(key, static_cast<uint32_t>(l), static_cast<uint32_t>(b),
                                 kStreamConfidence, static_cast<uint32_t>(offset));
          s = logf(s) + gt * g;
        }
        score[l] = s;
      }
      const int64_t take = std::min<int64_t>(std::max<int64_t>(k_p[b], 0), pos.size());
      if (take == 0) return;
      // score descending, position ascending on ties (stable over increasing positions)
      std::stable_sort(pos.begin(), pos.end(), [&](int64_t a, int64_t c) { return score[a] > score[c]; });
      for (int64_t i = 0; i < take; ++i) row[pos[i]] = cand_p[b * length + pos[i]];
    }
  });
  return out.to(ids.scalar_type());
}

std::string build_info() {
  return std::string("dbert_native: kernels for ") + isa_level() + ", " + std::to_string(at::get_num_threads()) +
         " threads";
}

}  // namespace

TORCH_LIBRARY(dbert_native, m) {
  m.def("spindle_mask(Tensor ids, Tensor base, Tensor amp, Tensor info, Tensor protected_ids, Tensor rng, "
        "int form, int mask_id) -> (Tensor, Tensor)");
  m.def("sample(Tensor logits, Tensor? ids, Tensor unmask_prob, Tensor banned, Tensor row_index, Tensor rng, "
        "int mask_id, float inv_temperature, bool greedy, int top_k, float top_p, bool with_entropy, "
        "bool with_margin) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("topk_unmask(Tensor ids, Tensor candidates, Tensor confidence, Tensor k, Tensor rng, int mask_id, "
        "float gumbel_temperature) -> Tensor");
  m.def("build_info() -> str", &build_info);
}

TORCH_LIBRARY_IMPL(dbert_native, CPU, m) {
  m.impl("spindle_mask", &spindle_mask);
  m.impl("sample", &sample);
  m.impl("topk_unmask", &topk_unmask);
}

}  // namespace dbert_native
