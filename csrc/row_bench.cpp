// Timing harness of the per-row sampling kernel (sample_row), without torch: the cost per
// vocabulary entry of each path at the level picked at load time (DBERT_NATIVE_ISA caps it).
//
//   dbert_native_row_bench [rows=256] [scale=0.3] [mode=full] [passes=3]
//
// Rows of V = 30522 iid normal logits times `scale` (0.3: nearly flat rows like a randomly
// initialised model's; 40: very peaked ones); mode: full, greedy, topk30, topp0.9 or stats (full
// vocabulary with entropy and margin). Prints thread CPU time per pass, so that other processes
// on the machine distort it less than wall-clock time (they still share caches and cores).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <random>
#include <string>
#include <vector>

#include "row_kernels.h"

using namespace dbert_native;

namespace {

double thread_cpu_s() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t vocab = 30522;
  const int rows = argc > 1 ? std::atoi(argv[1]) : 256;
  const float scale = argc > 2 ? static_cast<float>(std::atof(argv[2])) : 0.3f;
  const std::string mode = argc > 3 ? argv[3] : "full";
  const int passes = argc > 4 ? std::atoi(argv[4]) : 3;
  if (rows < 1 || passes < 1 ||
      (mode != "full" && mode != "greedy" && mode != "topk30" && mode != "topp0.9" && mode != "stats")) {
    std::fprintf(stderr, "usage: %s [rows] [scale] [full|greedy|topk30|topp0.9|stats] [passes]\n", argv[0]);
    return 2;
  }
  std::mt19937 gen(0);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(rows) * vocab);
  for (float& v : x) v = normal(gen) * scale;
  std::vector<uint8_t> banned(vocab, 0);
  banned[103] = 1;
  std::vector<int32_t> idx(vocab);
  std::vector<float> vals(vocab), work(vocab);
  std::vector<double> hist(kScratchHistBins);
  SampleParams p{};
  p.inv_t = 1.0f;
  p.greedy = mode == "greedy";
  p.top_k = mode == "topk30" ? 30 : 0;
  p.top_p = mode == "topp0.9" ? 0.9f : 1.0f;
  p.with_entropy = p.with_margin = mode == "stats";
  p.key = {1234u, 0u};
  p.offset = 5;
  const RowScratch scratch{idx.data(), vals.data(), work.data(), hist.data()};
  std::printf("%s, %d rows x %lld, scale %g, %s\n", isa_level(), rows, static_cast<long long>(vocab), scale,
              mode.c_str());
  int64_t checksum = 0;
  for (int pass = 0; pass < passes; ++pass) {
    const double t0 = thread_cpu_s();
    for (int r = 0; r < rows; ++r) {
      RowResult res;
      sample_row(x.data() + static_cast<size_t>(r) * vocab, banned.data(), vocab, p, static_cast<uint32_t>(r),
                 scratch, &res);
      checksum += res.token;
    }
    const double s = thread_cpu_s() - t0;
    std::printf("pass %d: %.2f ns per entry, %.1f ms per 1024 rows (CPU time)\n", pass,
                1e9 * s / rows / static_cast<double>(vocab), 1e3 * s * 1024 / rows);
  }
  std::printf("token checksum %lld\n", static_cast<long long>(checksum));
  return 0;
}
