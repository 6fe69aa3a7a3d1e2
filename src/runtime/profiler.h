// Per-op profiling: a Backend that forwards every op to the real backend and brackets it with the
// backend's timing marks (CUDA events on the GPU), so the times are device times in op order.
// Results come out as a Chrome trace (chrome://tracing, Perfetto) and as a summary table of the
// ops by total time, like torch.profiler's key_averages. Graph recording is declined, so every
// op runs (and is timed) on its own.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"

namespace llamaq {

class ProfilingBackend final : public Backend {
 public:
  explicit ProfilingBackend(std::unique_ptr<Backend> inner);
  ~ProfilingBackend() override;

  // Names the ops that follow until the next region (e.g. "prefill", "decode"): a span on its
  // own row of the trace.
  void begin_region(const std::string& name);
  void end_region();
  // Forgets every op and region recorded so far (a warm-up), so that the trace and the summary
  // cover what follows; the trace's time origin moves to now.
  void clear();

  struct OpSummary {
    std::string name;
    int64_t calls = 0;
    double total_ms = 0;
  };
  // Ops grouped by name, by total time, largest first (waits for the device).
  std::vector<OpSummary> summary();
  std::string summary_table(size_t max_rows = 20);
  // The trace in the Chrome trace-event JSON format, written atomically.
  void write_chrome_trace(const std::filesystem::path& path);

  std::string_view name() const override { return inner_->name(); }
  Device device() const override { return inner_->device(); }
  DType preferred_kv_dtype() const override { return inner_->preferred_kv_dtype(); }
  Tensor alloc(DType dtype, Shape shape) override;
  Tensor upload(const Tensor& host) override;
  void copy_from_host(Tensor& dst, const void* src) override;
  void copy_to_host(const Tensor& src, void* dst) override;
  LinearWeight upload_linear(const LinearWeight& host) override;
  Tensor upload_embedding(const Tensor& host) override;
  MemoryStats memory_stats() const override { return inner_->memory_stats(); }
  void reset_peak_memory() override { inner_->reset_peak_memory(); }
  std::unique_ptr<TimingMark> timing_mark() override { return inner_->timing_mark(); }
  double elapsed_ms(const TimingMark& from, const TimingMark& to) override {
    return inner_->elapsed_ms(from, to);
  }

  void embedding(const Tensor& table, const Tensor& ids, Tensor& out) override;
  void rmsnorm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) override;
  void linear(const Tensor& x, const LinearWeight& w, Tensor& out) override;
  void linear_group(const Tensor& x, std::span<const LinearWeight* const> ws,
                    std::span<Tensor* const> outs) override;
  void linear_swiglu(const Tensor& x, const LinearWeight& wg, const LinearWeight& wu, Tensor& gate,
                     Tensor& up) override;
  void linear_add(const Tensor& x, const LinearWeight& w, Tensor& residual,
                  Tensor& scratch) override;
  void rope(Tensor& x, const Tensor& positions, const Tensor& inv_freq) override;
  void rope_kv_store(Tensor& q, Tensor& k, const Tensor& v, const Tensor& positions,
                     const Tensor& inv_freq, const KvLayerView& kv) override;
  void kv_store(const Tensor& k, const Tensor& v, const Tensor& positions,
                const KvLayerView& kv) override;
  void attention(const Tensor& q, const Tensor& positions, const KvLayerView& kv,
                 Tensor& out) override;
  void swiglu(const Tensor& gate, const Tensor& up, Tensor& out) override;
  void add_inplace(Tensor& x, const Tensor& y) override;
  void argmax(const Tensor& logits, Tensor& ids) override;

  void rmsnorm_backward(const Tensor& x, const Tensor& weight, float eps, const Tensor& dy,
                        Tensor& dx) override;
  void rope_backward(Tensor& grad, const Tensor& positions, const Tensor& inv_freq) override;
  void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                          const Tensor& d_out, Tensor& dq, Tensor& dk, Tensor& dv) override;
  void swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& ds, Tensor& d_gate,
                       Tensor& d_up) override;
  void linear_backward_input(const Tensor& dy, const LinearWeight& w, Tensor& dx,
                             bool accumulate) override;
  void matmul_tn(const Tensor& a, const Tensor& b, Tensor& c, const GemmUpdate& u) override;
  void matmul_nn(const Tensor& a, const Tensor& b, Tensor& c, const GemmUpdate& u) override;
  void matmul_nt(const Tensor& a, const Tensor& b, Tensor& c, const GemmUpdate& u) override;
  void scale(const Tensor& x, float s, Tensor& out) override;
  void multiply(const Tensor& x, const Tensor& y, Tensor& out) override;
  void zero(Tensor& x) override;
  void dropout_mask(uint64_t base, uint64_t threshold, float keep_scale, Tensor& mask) override;
  void cross_entropy(Tensor& logits, const Tensor& targets, double normalizer,
                     Tensor& losses) override;
  double sum_of_squares(std::span<const Tensor> xs) override;
  void adamw_step(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq,
                  const AdamWUpdate& update) override;
  void synchronize() override { inner_->synchronize(); }

 private:
  struct Event {
    std::string name;    // the op family: "linear.nf4", "attention.decode", ...
    std::string detail;  // shapes
    int region = -1;     // index into regions_
    std::unique_ptr<TimingMark> start, end;
    double start_ms = -1, duration_ms = -1;  // resolved by resolve()
  };
  struct Region {
    std::string name;
    std::unique_ptr<TimingMark> start, end;
    double start_ms = -1, duration_ms = -1;
  };
  template <typename Op>
  void timed(std::string name, std::string detail, Op&& op);
  void resolve();  // turns marks into milliseconds since the first mark

  std::unique_ptr<Backend> inner_;
  std::unique_ptr<TimingMark> origin_;
  std::vector<Event> events_;
  std::vector<Region> regions_;
  int open_region_ = -1;
};

}  // namespace llamaq
