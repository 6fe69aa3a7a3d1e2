// CUDA graphs behind Backend::capture: a stream capture of the ops a callback issues, instantiated
// once and replayed with one launch. The graph owns every block allocated during the capture, so
// the caching allocator never hands them to other work while the graph can still touch them.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/cuda_context.h"

namespace llamaq::cuda {

class CudaGraph final : public OpGraph {
 public:
  CudaGraph(CudaContext& ctx, cudaGraphExec_t exec, std::vector<std::shared_ptr<void>> owned);
  ~CudaGraph() override;
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;

  void replay() override;

 private:
  CudaContext& ctx_;
  cudaGraphExec_t exec_;
  // Released after the graph: only work queued later on the stream can reuse them.
  std::vector<std::shared_ptr<void>> owned_;
};

// A CUDA event recorded on ctx's stream (profiling marks).
class CudaEventMark final : public TimingMark {
 public:
  explicit CudaEventMark(CudaContext& ctx);
  ~CudaEventMark() override;
  CudaEventMark(const CudaEventMark&) = delete;
  CudaEventMark& operator=(const CudaEventMark&) = delete;
  cudaEvent_t event() const { return event_; }

 private:
  cudaEvent_t event_ = nullptr;
};

// Milliseconds between two marks of the same stream, after waiting for the later one.
double elapsed_between(const TimingMark& from, const TimingMark& to);

// Records what `record` issues on ctx's stream and instantiates it.
std::unique_ptr<OpGraph> capture_graph(CudaContext& ctx, const std::function<void()>& record);

}  // namespace llamaq::cuda
