// The parts of the backend interface that have a default: host-clock timing marks.
#include "backend/backend.h"

#include <chrono>

#include "core/error.h"

namespace llamaq {
namespace {

struct HostClockMark final : TimingMark {
  std::chrono::steady_clock::time_point time = std::chrono::steady_clock::now();
};

const HostClockMark& host_mark(const TimingMark& mark) {
  const auto* host = dynamic_cast<const HostClockMark*>(&mark);
  if (!host) fail("profiling: a timing mark of another backend");
  return *host;
}

}  // namespace

std::unique_ptr<TimingMark> Backend::timing_mark() { return std::make_unique<HostClockMark>(); }

double Backend::elapsed_ms(const TimingMark& from, const TimingMark& to) {
  return std::chrono::duration<double, std::milli>(host_mark(to).time - host_mark(from).time)
      .count();
}

}  // namespace llamaq
