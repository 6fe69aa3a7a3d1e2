#include "backend/cuda/cuda_graph.h"

#include "backend/cuda/cuda_check.h"

namespace llamaq::cuda {

CudaGraph::CudaGraph(CudaContext& ctx, cudaGraphExec_t exec,
                     std::vector<std::shared_ptr<void>> owned)
    : ctx_(ctx), exec_(exec), owned_(std::move(owned)) {}

CudaGraph::~CudaGraph() {
  (void)cudaSetDevice(ctx_.device());
  (void)cudaGraphExecDestroy(exec_);
}

void CudaGraph::replay() {
  ctx_.activate("graph replay");
  check_cuda(cudaGraphLaunch(exec_, ctx_.stream()), "graph replay", "cudaGraphLaunch");
}

std::unique_ptr<OpGraph> capture_graph(CudaContext& ctx, const std::function<void()>& record) {
  const char* op = "capture";
  ctx.activate(op);
  ctx.begin_capture(op);
  try {
    record();
  } catch (...) {
    // Leave the stream usable: end the capture, drop what was recorded, clear the sticky error.
    try {
      CudaContext::Captured failed = ctx.end_capture(op);
      if (failed.graph) (void)cudaGraphDestroy(failed.graph);
    } catch (...) {
    }
    (void)cudaGetLastError();
    throw;
  }
  CudaContext::Captured captured = ctx.end_capture(op);
  cudaGraphExec_t exec = nullptr;
  const cudaError_t status = cudaGraphInstantiate(&exec, captured.graph, 0);
  (void)cudaGraphDestroy(captured.graph);
  check_cuda(status, op, "cudaGraphInstantiate");
  return std::make_unique<CudaGraph>(ctx, exec, std::move(captured.allocations));
}

CudaEventMark::CudaEventMark(CudaContext& ctx) {
  const char* op = "timing mark";
  ctx.activate(op);
  check_cuda(cudaEventCreate(&event_), op, "cudaEventCreate");
  check_cuda(cudaEventRecord(event_, ctx.stream()), op, "cudaEventRecord");
}

CudaEventMark::~CudaEventMark() { (void)cudaEventDestroy(event_); }

double elapsed_between(const TimingMark& from, const TimingMark& to) {
  const char* op = "profiling";
  const auto* a = dynamic_cast<const CudaEventMark*>(&from);
  const auto* b = dynamic_cast<const CudaEventMark*>(&to);
  if (!a || !b) fail_op(op, "a timing mark of another backend");
  check_cuda(cudaEventSynchronize(b->event()), op, "cudaEventSynchronize");
  float ms = 0;
  check_cuda(cudaEventElapsedTime(&ms, a->event(), b->event()), op, "cudaEventElapsedTime");
  return double(ms);
}

}  // namespace llamaq::cuda
