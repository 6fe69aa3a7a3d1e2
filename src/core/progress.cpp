#include "core/progress.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cstdio>

namespace llamaq {

ProgressBar::ProgressBar(std::string label, int64_t total, std::string unit)
    : label_(std::move(label)), unit_(std::move(unit)), total_(total),
      terminal_(isatty(STDERR_FILENO)) {}

void ProgressBar::advance(int64_t n, const std::string& detail) {
  done_ += n;
  draw(detail);
}

void ProgressBar::draw(const std::string& detail) {
  const double fraction = total_ > 0 ? double(done_) / double(total_) : 1.0;
  const double elapsed = clock_.seconds();
  const double eta = fraction > 0 ? elapsed * (1 - fraction) / fraction : 0;
  if (terminal_) {
    constexpr int kWidth = 30;
    const int filled = int(fraction * kWidth);
    std::fprintf(stderr, "\r%s [%s%s] %lld/%lld %s %.0f%% ETA %.0fs %s\x1b[K", label_.c_str(),
                 std::string(size_t(filled), '#').c_str(),
                 std::string(size_t(kWidth - filled), '.').c_str(), (long long)done_,
                 (long long)total_, unit_.c_str(), fraction * 100, eta, detail.c_str());
    std::fflush(stderr);
    return;
  }
  const int decile = int(fraction * 10);
  if (decile == last_decile_) return;
  last_decile_ = decile;
  std::fprintf(stderr, "%s: %lld/%lld %s (%d%%, %.1f s) %s\n", label_.c_str(), (long long)done_,
               (long long)total_, unit_.c_str(), decile * 10, elapsed, detail.c_str());
}

void ProgressBar::finish(const std::string& summary) {
  if (finished_) return;
  finished_ = true;
  if (terminal_) std::fprintf(stderr, "\r\x1b[K");
  std::fprintf(stderr, "%s: %lld %s in %.2f s%s%s\n", label_.c_str(), (long long)done_,
               unit_.c_str(), clock_.seconds(), summary.empty() ? "" : ", ", summary.c_str());
}

}  // namespace llamaq
