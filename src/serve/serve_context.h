// What the HTTP handlers share once the model is loaded, and the per-request log record.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "runtime/batch_scheduler.h"
#include "tokenizer/tokenizer.h"

namespace llamaq::serve {

struct ServeContext {
  explicit ServeContext(Tokenizer t) : tokenizer(std::move(t)) {}
  Tokenizer tokenizer;
  std::vector<std::string> model_names;  // [0] the base model, then adapters (scheduler order)
  std::vector<int32_t> stop_ids;         // ids that end generation (EOS, <|eot_id|>, ...)
  BatchScheduler* scheduler = nullptr;
  int64_t context_tokens = 0;
  double timeout_s = 600;  // longest a generation request may take
  int64_t created = 0;     // unix seconds the server started (for /v1/models)
};

// One log line per request, written when the response is complete (streams: when they end).
struct RequestLog {
  RequestLog(std::string m, std::string p, std::string r)
      : method(std::move(m)), path(std::move(p)), remote(std::move(r)) {}
  std::string method;
  std::string path;
  std::string remote;
  int status = 0;
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  std::string model;
  std::string note;  // finish reason or error text
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
};

using LogSink = std::function<void(const RequestLog&)>;

}  // namespace llamaq::serve
