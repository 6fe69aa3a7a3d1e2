#include "runtime/profiler.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <map>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/atomic_file.h"

namespace llamaq {
namespace {

std::string dims(const Tensor& t) {
  return shape_to_string(t.shape());
}

// "[out, in]" of a projection's weight.
std::string weight_dims(const LinearWeight& w) {
  return fmt::format("[{}, {}]", w.out_features(), w.in_features());
}

std::string linear_kind(const LinearWeight& w) {
  if (w.quantized()) return "linear.nf4";
  std::string name = "linear." + std::string(dtype_name(w.weight.dtype()));
  std::transform(name.begin(), name.end(), name.begin(),
                 [](unsigned char c) { return char(std::tolower(c)); });
  return name;
}

}  // namespace

ProfilingBackend::ProfilingBackend(std::unique_ptr<Backend> inner) : inner_(std::move(inner)) {
  if (!inner_) fail("profiling: no backend to profile");
  origin_ = inner_->timing_mark();
}

ProfilingBackend::~ProfilingBackend() = default;

template <typename Op>
void ProfilingBackend::timed(std::string name, std::string detail, Op&& op) {
  Event event;
  event.name = std::move(name);
  event.detail = std::move(detail);
  event.region = open_region_;
  event.start = inner_->timing_mark();
  op();
  event.end = inner_->timing_mark();
  events_.push_back(std::move(event));
}

void ProfilingBackend::begin_region(const std::string& name) {
  if (open_region_ >= 0) end_region();
  Region region;
  region.name = name;
  region.start = inner_->timing_mark();
  regions_.push_back(std::move(region));
  open_region_ = int(regions_.size()) - 1;
}

void ProfilingBackend::end_region() {
  if (open_region_ < 0) return;
  regions_[size_t(open_region_)].end = inner_->timing_mark();
  open_region_ = -1;
}

void ProfilingBackend::clear() {
  events_.clear();
  regions_.clear();
  open_region_ = -1;
  origin_ = inner_->timing_mark();
}

void ProfilingBackend::resolve() {
  end_region();
  for (Event& e : events_) {
    if (e.duration_ms >= 0) continue;
    e.start_ms = inner_->elapsed_ms(*origin_, *e.start);
    e.duration_ms = inner_->elapsed_ms(*e.start, *e.end);
    e.start.reset();
    e.end.reset();
  }
  for (Region& r : regions_) {
    if (r.duration_ms >= 0 || !r.end) continue;
    r.start_ms = inner_->elapsed_ms(*origin_, *r.start);
    r.duration_ms = inner_->elapsed_ms(*r.start, *r.end);
  }
}

std::vector<ProfilingBackend::OpSummary> ProfilingBackend::summary() {
  resolve();
  std::map<std::string, OpSummary> by_name;
  for (const Event& e : events_) {
    OpSummary& s = by_name[e.name];
    s.name = e.name;
    s.calls += 1;
    s.total_ms += e.duration_ms;
  }
  std::vector<OpSummary> rows;
  for (auto& [name, s] : by_name)
    rows.push_back(s);
  std::sort(rows.begin(), rows.end(),
            [](const OpSummary& a, const OpSummary& b) { return a.total_ms > b.total_ms; });
  return rows;
}

std::string ProfilingBackend::summary_table(size_t max_rows) {
  const std::vector<OpSummary> rows = summary();
  double total = 0;
  for (const OpSummary& r : rows)
    total += r.total_ms;
  std::string out = fmt::format("ops on {} by total time ({:.3f} ms in {} ops)\n", inner_->name(),
                                total, events_.size());
  out += "| op | calls | total ms | mean us | % |\n|---|---|---|---|---|\n";
  for (size_t i = 0; i < rows.size() && i < max_rows; ++i) {
    const OpSummary& r = rows[i];
    out +=
        fmt::format("| {} | {} | {:.3f} | {:.1f} | {:.1f} |\n", r.name, r.calls, r.total_ms,
                    1e3 * r.total_ms / double(r.calls), total > 0 ? 100 * r.total_ms / total : 0);
  }
  return out;
}

void ProfilingBackend::write_chrome_trace(const std::filesystem::path& path) {
  resolve();
  nlohmann::json events = nlohmann::json::array();
  for (const Region& r : regions_) {
    if (r.duration_ms < 0) continue;
    events.push_back({{"name", r.name},
                      {"cat", "region"},
                      {"ph", "X"},
                      {"pid", 0},
                      {"tid", 0},
                      {"ts", r.start_ms * 1e3},
                      {"dur", r.duration_ms * 1e3}});
  }
  for (const Event& e : events_) {
    nlohmann::json args = {{"shapes", e.detail}};
    if (e.region >= 0) args["region"] = regions_[size_t(e.region)].name;
    events.push_back({{"name", e.name},
                      {"cat", "op"},
                      {"ph", "X"},
                      {"pid", 0},
                      {"tid", 1},
                      {"ts", e.start_ms * 1e3},
                      {"dur", e.duration_ms * 1e3},
                      {"args", args}});
  }
  const nlohmann::json names = {{{"name", "thread_name"},
                                 {"ph", "M"},
                                 {"pid", 0},
                                 {"tid", 0},
                                 {"args", {{"name", "regions"}}}},
                                {{"name", "thread_name"},
                                 {"ph", "M"},
                                 {"pid", 0},
                                 {"tid", 1},
                                 {"args", {{"name", std::string(inner_->name()) + " ops"}}}}};
  for (const auto& n : names)
    events.push_back(n);
  const nlohmann::json trace = {{"traceEvents", events}, {"displayTimeUnit", "ms"}};
  write_file_atomic(path, trace.dump() + "\n");
}

Tensor ProfilingBackend::alloc(DType dtype, Shape shape) {
  return inner_->alloc(dtype, std::move(shape));
}
Tensor ProfilingBackend::upload(const Tensor& host) {
  return inner_->upload(host);
}
LinearWeight ProfilingBackend::upload_linear(const LinearWeight& host) {
  return inner_->upload_linear(host);
}

Tensor ProfilingBackend::upload_embedding(const Tensor& host) {
  return inner_->upload_embedding(host);
}

void ProfilingBackend::copy_from_host(Tensor& dst, const void* src) {
  timed("copy_from_host", dims(dst), [&] { inner_->copy_from_host(dst, src); });
}

void ProfilingBackend::copy_to_host(const Tensor& src, void* dst) {
  timed("copy_to_host", dims(src), [&] { inner_->copy_to_host(src, dst); });
}

void ProfilingBackend::embedding(const Tensor& table, const Tensor& ids, Tensor& out) {
  timed("embedding", dims(out), [&] { inner_->embedding(table, ids, out); });
}

void ProfilingBackend::rmsnorm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) {
  timed("rmsnorm", dims(x), [&] { inner_->rmsnorm(x, weight, eps, out); });
}

void ProfilingBackend::linear(const Tensor& x, const LinearWeight& w, Tensor& out) {
  timed(linear_kind(w), fmt::format("{} x {}", dims(x), weight_dims(w)),
        [&] { inner_->linear(x, w, out); });
}

void ProfilingBackend::linear_group(const Tensor& x, std::span<const LinearWeight* const> ws,
                                    std::span<Tensor* const> outs) {
  std::string shapes = dims(x) + " x";
  for (const LinearWeight* w : ws)
    shapes += fmt::format(" {}", weight_dims(*w));
  timed(ws.empty() ? std::string("linear_group") : linear_kind(*ws[0]) + ".group", shapes,
        [&] { inner_->linear_group(x, ws, outs); });
}

void ProfilingBackend::linear_add(const Tensor& x, const LinearWeight& w, Tensor& residual,
                                  Tensor& scratch) {
  timed(linear_kind(w) + ".add", fmt::format("{} x {}", dims(x), weight_dims(w)),
        [&] { inner_->linear_add(x, w, residual, scratch); });
}

void ProfilingBackend::linear_swiglu(const Tensor& x, const LinearWeight& wg,
                                     const LinearWeight& wu, Tensor& gate, Tensor& up) {
  timed(linear_kind(wg) + ".swiglu", fmt::format("{} x 2 {}", dims(x), weight_dims(wg)),
        [&] { inner_->linear_swiglu(x, wg, wu, gate, up); });
}

void ProfilingBackend::rope_kv_store(Tensor& q, Tensor& k, const Tensor& v, const Tensor& positions,
                                     const Tensor& inv_freq, const KvLayerView& kv) {
  timed("rope_kv_store", dims(q), [&] { inner_->rope_kv_store(q, k, v, positions, inv_freq, kv); });
}

void ProfilingBackend::rope(Tensor& x, const Tensor& positions, const Tensor& inv_freq) {
  timed("rope", dims(x), [&] { inner_->rope(x, positions, inv_freq); });
}

void ProfilingBackend::kv_store(const Tensor& k, const Tensor& v, const Tensor& positions,
                                const KvLayerView& kv) {
  timed("kv_store", dims(k), [&] { inner_->kv_store(k, v, positions, kv); });
}

void ProfilingBackend::attention(const Tensor& q, const Tensor& positions, const KvLayerView& kv,
                                 Tensor& out) {
  // Few queries are a decode step; many, a prefill (different kernels on the GPU).
  const std::string name = q.dim(0) <= 4 ? "attention.decode" : "attention.prefill";
  timed(name, dims(q), [&] { inner_->attention(q, positions, kv, out); });
}

void ProfilingBackend::swiglu(const Tensor& gate, const Tensor& up, Tensor& out) {
  timed("swiglu", dims(gate), [&] { inner_->swiglu(gate, up, out); });
}

void ProfilingBackend::add_inplace(Tensor& x, const Tensor& y) {
  timed("add", dims(x), [&] { inner_->add_inplace(x, y); });
}

void ProfilingBackend::argmax(const Tensor& logits, Tensor& ids) {
  timed("argmax", dims(logits), [&] { inner_->argmax(logits, ids); });
}

void ProfilingBackend::rmsnorm_backward(const Tensor& x, const Tensor& weight, float eps,
                                        const Tensor& dy, Tensor& dx) {
  timed("rmsnorm_backward", dims(x), [&] { inner_->rmsnorm_backward(x, weight, eps, dy, dx); });
}

void ProfilingBackend::rope_backward(Tensor& grad, const Tensor& positions,
                                     const Tensor& inv_freq) {
  timed("rope_backward", dims(grad), [&] { inner_->rope_backward(grad, positions, inv_freq); });
}

void ProfilingBackend::attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                          const Tensor& out, const Tensor& d_out, Tensor& dq,
                                          Tensor& dk, Tensor& dv) {
  timed("attention_backward", dims(q),
        [&] { inner_->attention_backward(q, k, v, out, d_out, dq, dk, dv); });
}

void ProfilingBackend::swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& ds,
                                       Tensor& d_gate, Tensor& d_up) {
  timed("swiglu_backward", dims(gate),
        [&] { inner_->swiglu_backward(gate, up, ds, d_gate, d_up); });
}

void ProfilingBackend::linear_backward_input(const Tensor& dy, const LinearWeight& w, Tensor& dx,
                                             bool accumulate) {
  timed(linear_kind(w) + "_backward", dims(dy),
        [&] { inner_->linear_backward_input(dy, w, dx, accumulate); });
}

void ProfilingBackend::matmul_tn(const Tensor& a, const Tensor& b, Tensor& c, const GemmUpdate& u) {
  timed("matmul_tn", dims(a) + " " + dims(b), [&] { inner_->matmul_tn(a, b, c, u); });
}

void ProfilingBackend::matmul_nn(const Tensor& a, const Tensor& b, Tensor& c, const GemmUpdate& u) {
  timed("matmul_nn", dims(a) + " " + dims(b), [&] { inner_->matmul_nn(a, b, c, u); });
}

void ProfilingBackend::matmul_nt(const Tensor& a, const Tensor& b, Tensor& c, const GemmUpdate& u) {
  timed("matmul_nt", dims(a) + " " + dims(b), [&] { inner_->matmul_nt(a, b, c, u); });
}

void ProfilingBackend::scale(const Tensor& x, float s, Tensor& out) {
  timed("scale", dims(x), [&] { inner_->scale(x, s, out); });
}

void ProfilingBackend::multiply(const Tensor& x, const Tensor& y, Tensor& out) {
  timed("multiply", dims(x), [&] { inner_->multiply(x, y, out); });
}

void ProfilingBackend::zero(Tensor& x) {
  timed("zero", dims(x), [&] { inner_->zero(x); });
}

void ProfilingBackend::dropout_mask(uint64_t base, uint64_t threshold, float keep_scale,
                                    Tensor& mask) {
  timed("dropout_mask", dims(mask),
        [&] { inner_->dropout_mask(base, threshold, keep_scale, mask); });
}

void ProfilingBackend::cross_entropy(Tensor& logits, const Tensor& targets, double normalizer,
                                     Tensor& losses) {
  timed("cross_entropy", dims(logits),
        [&] { inner_->cross_entropy(logits, targets, normalizer, losses); });
}

double ProfilingBackend::sum_of_squares(std::span<const Tensor> xs) {
  double result = 0;
  timed("sum_of_squares", std::to_string(xs.size()) + " tensors",
        [&] { result = inner_->sum_of_squares(xs); });
  return result;
}

void ProfilingBackend::adamw_step(Tensor& param, const Tensor& grad, Tensor& exp_avg,
                                  Tensor& exp_avg_sq, const AdamWUpdate& update) {
  timed("adamw_step", dims(param),
        [&] { inner_->adamw_step(param, grad, exp_avg, exp_avg_sq, update); });
}

}  // namespace llamaq
