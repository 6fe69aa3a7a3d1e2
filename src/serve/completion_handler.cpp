#include "serve/completion_handler.h"

#include <algorithm>
#include <random>

#include <fmt/format.h>

#include "core/error.h"
#include "serve/client_connection.h"
#include "serve/openai_json.h"
#include "serve/text_stream.h"
#include "serve/token_channel.h"

namespace llamaq::serve {
namespace {

using Clock = std::chrono::steady_clock;

std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

int model_index(const ServeContext& ctx, const std::string& name) {
  if (name.empty()) return 0;
  const auto it = std::find(ctx.model_names.begin(), ctx.model_names.end(), name);
  if (it == ctx.model_names.end()) {
    std::string known;
    for (const std::string& n : ctx.model_names)
      known += (known.empty() ? "" : ", ") + n;
    throw ApiError(404, "invalid_request_error",
                   fmt::format("The model '{}' does not exist (this server has: {})", name, known),
                   "model", "model_not_found");
  }
  return int(it - ctx.model_names.begin());
}

std::vector<int32_t> prompt_ids(const ServeContext& ctx, const GenerationRequest& r) {
  try {
    if (r.endpoint == Endpoint::Chat) {
      // Message content is plain text: special-token strings in it are never control tokens.
      return ctx.tokenizer.encode_chat(r.messages, /*add_generation_prompt=*/true);
    }
    if (!r.prompt_ids.empty()) return r.prompt_ids;
    return ctx.tokenizer.encode_with_bos(r.prompt, /*parse_special=*/false);
  } catch (const Error& e) {
    bad_request(r.endpoint == Endpoint::Chat ? "messages" : "prompt", e.what());
  }
}

// The scheduler request for a parsed API request (callbacks are added by the caller).
BatchRequest batch_request(const ServeContext& ctx, const GenerationRequest& r) {
  BatchRequest b;
  b.model = model_index(ctx, r.model);
  b.prompt = prompt_ids(ctx, r);
  const int64_t prompt = int64_t(b.prompt.size());
  const int32_t vocab = ctx.tokenizer.vocab_size();
  for (int32_t id : b.prompt) {
    if (id >= vocab)
      bad_request("prompt", fmt::format("token id {} is outside the vocabulary of {}", id, vocab));
  }
  if (prompt >= ctx.context_tokens) {
    throw ApiError(400, "invalid_request_error",
                   fmt::format("This model's maximum context length is {} tokens, but the prompt "
                               "has {} tokens (no room for a completion)",
                               ctx.context_tokens, prompt),
                   r.endpoint == Endpoint::Chat ? "messages" : "prompt", "context_length_exceeded");
  }
  b.max_new_tokens = r.max_tokens.value_or(ctx.context_tokens - prompt);
  if (prompt + b.max_new_tokens > ctx.context_tokens) {
    throw ApiError(
        400, "invalid_request_error",
        fmt::format("This model's maximum context length is {} tokens; the request has "
                    "{} prompt tokens and asks for {} completion tokens ({} in all)",
                    ctx.context_tokens, prompt, b.max_new_tokens, prompt + b.max_new_tokens),
        "max_tokens", "context_length_exceeded");
  }
  b.stop_ids = ctx.stop_ids;
  // top_p = 0 keeps only the most likely token: greedy.
  b.sampling.temperature = r.top_p > 0 ? r.temperature : 0.0f;
  b.sampling.top_p = r.top_p > 0 ? r.top_p : 1.0f;
  b.sampling.seed = r.seed ? *r.seed : std::random_device{}();
  for (const auto& [id, bias] : r.logit_bias) {
    if (id >= vocab)
      bad_request("logit_bias",
                  fmt::format("logit_bias token {} is outside the vocabulary of {}", id, vocab));
  }
  b.adjustments = {r.logit_bias, r.presence_penalty, r.frequency_penalty};
  b.logprobs = r.logprobs;
  b.top_logprobs = r.top_logprobs;
  return b;
}

// One request in flight: its channel, text and bookkeeping, shared with the stream provider.
struct Call {
  const ServeContext& ctx;
  GenerationRequest request;
  ResponseMeta meta;
  std::shared_ptr<TokenChannel> channel = std::make_shared<TokenChannel>();
  TextStream text;
  Clock::time_point deadline;
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  std::vector<TokenEvent> pending_logprobs;  // tokens whose logprobs are not sent yet
  bool started = false;                      // the first stream chunk went out
  bool finished = false;

  Call(const ServeContext& c, GenerationRequest r, const std::string& model_name)
      : ctx(c),
        request(std::move(r)),
        meta(new_response_meta(request.endpoint, model_name)),
        text(c.tokenizer, request.stop),
        deadline(Clock::now() + std::chrono::milliseconds(int64_t(c.timeout_s * 1000))) {}

  // Text released by these tokens; cancels generation once a stop string appears.
  std::string consume(std::deque<TokenEvent>& events) {
    std::string out;
    for (TokenEvent& e : events) {
      if (text.stopped()) break;
      ++completion_tokens;
      out += text.push(e.id);
      if (request.logprobs) pending_logprobs.push_back(std::move(e));
      if (text.stopped()) channel->cancel();
    }
    events.clear();
    return out;
  }

  const char* finish_reason() const {
    return text.stopped() ? "stop" : finish_reason_name(channel->outcome().reason);
  }

  json take_logprobs(size_t text_offset) {
    if (!request.logprobs) return nullptr;
    json j = request.endpoint == Endpoint::Chat
                 ? chat_logprobs_json(ctx.tokenizer, pending_logprobs)
                 : completion_logprobs_json(ctx.tokenizer, pending_logprobs, text_offset);
    pending_logprobs.clear();
    return j;
  }
};

ApiError outcome_error(const BatchOutcome& o) {
  if (o.error == "the server is shutting down") {
    return ApiError(503, "server_error", "The server is shutting down; the request was cancelled",
                    "", "shutting_down");
  }
  return ApiError(500, "server_error", "Generation failed: " + o.error);
}

ApiError timeout_error(const ServeContext& ctx) {
  return ApiError(504, "server_error",
                  fmt::format("The request took longer than the server's --timeout of {} s and was "
                              "cancelled",
                              ctx.timeout_s),
                  "", "timeout");
}

void submit(const ServeContext& ctx, BatchRequest b, const std::shared_ptr<TokenChannel>& channel) {
  b.cancel = channel->cancel_flag();
  b.on_token = [channel](const TokenEvent& e) { return channel->push(e); };
  b.on_done = [channel](const BatchOutcome& o) { channel->close(o); };
  BatchScheduler::Admission admission;
  try {
    admission = ctx.scheduler->submit(std::move(b));
  } catch (const Error& e) {
    bad_request("", e.what());
  }
  if (admission == BatchScheduler::Admission::QueueFull) {
    throw ApiError(503, "server_error",
                   fmt::format("The server is busy: {} requests are already waiting (--max-queue); "
                               "retry later",
                               ctx.scheduler->options().max_queue),
                   "", "queue_full");
  }
  if (admission == BatchScheduler::Admission::Stopped) {
    throw ApiError(503, "server_error", "The server is shutting down", "", "shutting_down");
  }
}

// Logged for a non-streamed request whose client left before its answer: nginx's "client closed
// request" status, as no status reached the client.
ApiError disconnected_error() {
  return ApiError(499, "invalid_request_error", "client disconnected (cancelled)", "",
                  "client_disconnected");
}

// How often a non-streamed request checks that its client is still connected.
constexpr std::chrono::milliseconds kClientCheckInterval{150};

// The text of the whole generation. Checks the client's connection every interval while it
// waits: a client that has gone has its generation cancelled (its slot and KV blocks freed at
// the scheduler's next step).
std::string wait_for_text(Call& call, const ClientConnection& client) {
  std::string text;
  std::deque<TokenEvent> events;
  Clock::time_point next_check = Clock::now() + kClientCheckInterval;
  for (;;) {
    const TokenChannel::Wait w = call.channel->take(events, std::min(call.deadline, next_check));
    if (w == TokenChannel::Wait::Done) return text;
    text += call.consume(events);
    const Clock::time_point now = Clock::now();
    if (now >= call.deadline) {
      call.channel->cancel();
      throw timeout_error(call.ctx);
    }
    if (now >= next_check) {
      if (client.closed()) {
        call.channel->cancel();
        throw disconnected_error();
      }
      next_check = now + kClientCheckInterval;
    }
  }
}

void respond_whole(Call& call, const httplib::Request& req, httplib::Response& res) {
  const ClientConnection client({req.local_addr, req.local_port, req.remote_addr, req.remote_port});
  std::string text = wait_for_text(call, client);
  const BatchOutcome& o = call.channel->outcome();
  if (o.reason == FinishReason::Error) throw outcome_error(o);
  text += call.text.finish();
  const json usage = usage_json(call.prompt_tokens, call.completion_tokens);
  const json body = full_response_json(call.request.endpoint, call.meta, text, call.finish_reason(),
                                       call.take_logprobs(0), usage);
  res.set_content(dump(body), "application/json");
}

std::string sse(const json& j) {
  return "data: " + dump(j) + "\n\n";
}

// One call of the stream provider: waits for tokens and writes the chunks they complete.
// Returns false when the client is gone.
bool stream_step(Call& call, httplib::DataSink& sink, size_t& text_offset) {
  const Endpoint ep = call.request.endpoint;
  const auto write = [&](const std::string& s) { return sink.write(s.data(), s.size()); };
  if (!call.started) {
    call.started = true;
    if (ep == Endpoint::Chat &&
        !write(sse(chunk_json(ep, call.meta, "", nullptr, nullptr, true)))) {
      return false;
    }
  }
  std::deque<TokenEvent> events;
  const TokenChannel::Wait w = call.channel->take(events, call.deadline);
  if (w == TokenChannel::Wait::TimedOut) {
    call.channel->cancel();
    call.finished = true;
    write(sse(error_json(timeout_error(call.ctx))));
    write("data: [DONE]\n\n");
    sink.done();
    return true;
  }
  if (w == TokenChannel::Wait::Events) {
    const std::string text = call.consume(events);
    if (text.empty()) return true;
    const json logprobs = call.take_logprobs(text_offset);
    text_offset += text.size();
    return write(sse(chunk_json(ep, call.meta, text, nullptr, logprobs, false)));
  }
  call.finished = true;
  const BatchOutcome& o = call.channel->outcome();
  if (o.reason == FinishReason::Error) {
    write(sse(error_json(outcome_error(o))));
  } else {
    const std::string rest = call.text.finish();
    const json logprobs = call.take_logprobs(text_offset);
    if (!write(sse(chunk_json(ep, call.meta, rest, call.finish_reason(), logprobs, false))))
      return false;
    if (call.request.include_usage) {
      write(sse(
          usage_chunk_json(ep, call.meta, usage_json(call.prompt_tokens, call.completion_tokens))));
    }
  }
  write("data: [DONE]\n\n");
  sink.done();
  return true;
}

void respond_stream(std::shared_ptr<Call> call, httplib::Response& res, RequestLog log,
                    const LogSink& log_sink) {
  auto text_offset = std::make_shared<size_t>(0);
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");
  res.set_chunked_content_provider(
      "text/event-stream",
      [call, text_offset](size_t, httplib::DataSink& sink) {
        if (call->finished) {
          sink.done();
          return true;
        }
        if (!stream_step(*call, sink, *text_offset)) {
          call->channel->cancel();  // the client went away: free its slot and KV blocks
          return false;
        }
        return true;
      },
      [call, log, log_sink](bool success) mutable {
        call->channel->cancel();
        log.status = 200;
        log.prompt_tokens = call->prompt_tokens;
        log.completion_tokens = call->completion_tokens;
        log.note = !success || !call->finished ? "client disconnected (cancelled)"
                   : call->channel->outcome().reason == FinishReason::Error
                       ? call->channel->outcome().error
                       : call->finish_reason();
        if (log_sink) log_sink(log);
      });
}

}  // namespace

void handle_completion(const ServeContext& ctx, Endpoint endpoint, const httplib::Request& req,
                       httplib::Response& res, RequestLog& log, const LogSink& log_sink) {
  GenerationRequest r = endpoint == Endpoint::Chat ? parse_chat_request(req.body)
                                                   : parse_completion_request(req.body);
  BatchRequest b = batch_request(ctx, r);
  const std::string model_name = ctx.model_names[size_t(b.model)];
  log.model = model_name;
  log.prompt_tokens = int64_t(b.prompt.size());
  auto call = std::make_shared<Call>(ctx, std::move(r), model_name);
  call->prompt_tokens = int64_t(b.prompt.size());
  submit(ctx, std::move(b), call->channel);
  if (call->request.stream) {
    log.status = 0;  // logged when the stream ends
    RequestLog stream_log = log;
    stream_log.status = 200;
    respond_stream(call, res, stream_log, log_sink);
    return;
  }
  try {
    respond_whole(*call, req, res);
  } catch (...) {
    call->channel->cancel();
    log.completion_tokens = call->completion_tokens;
    throw;
  }
  log.completion_tokens = call->completion_tokens;
  log.note = call->finish_reason();
}

}  // namespace llamaq::serve
