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

void Backend::rope_kv_store(Tensor& q, Tensor& k, const Tensor& v, const Tensor& positions,
                            const Tensor& inv_freq, const KvLayerView& kv) {
  rope(q, positions, inv_freq);
  rope(k, positions, inv_freq);
  kv_store(k, v, positions, kv);
}

void Backend::linear_group(const Tensor& x, std::span<const LinearWeight* const> ws,
                           std::span<Tensor* const> outs) {
  if (ws.size() != outs.size()) {
    fail("linear_group: {} weights but {} outputs", ws.size(), outs.size());
  }
  for (size_t i = 0; i < ws.size(); ++i)
    linear(x, *ws[i], *outs[i]);
}

void Backend::linear_swiglu(const Tensor& x, const LinearWeight& wg, const LinearWeight& wu,
                            Tensor& gate, Tensor& up) {
  linear(x, wg, gate);
  linear(x, wu, up);
  swiglu(gate, up, gate);
}

void Backend::linear_add(const Tensor& x, const LinearWeight& w, Tensor& residual,
                         Tensor& scratch) {
  linear(x, w, scratch);
  add_inplace(residual, scratch);
}

std::unique_ptr<TimingMark> Backend::timing_mark() {
  return std::make_unique<HostClockMark>();
}

double Backend::elapsed_ms(const TimingMark& from, const TimingMark& to) {
  return std::chrono::duration<double, std::milli>(host_mark(to).time - host_mark(from).time)
      .count();
}

}  // namespace llamaq
