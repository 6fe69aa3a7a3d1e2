#include "serve/http_server.h"

#include <httplib.h>

#include <iostream>
#include <thread>

#include <fmt/format.h>

#include "core/error.h"
#include "serve/completion_handler.h"
#include "serve/openai_json.h"

namespace llamaq::serve {
namespace {

std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

void send_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status();
  if (e.status() == 503) res.set_header("Retry-After", "1");
  res.set_content(dump(error_json(e)), "application/json");
}

// The key from "Authorization: Bearer KEY" (empty when absent or another scheme).
std::string bearer_token(const httplib::Request& req) {
  const std::string value = req.get_header_value("Authorization");
  constexpr std::string_view prefix = "Bearer ";
  if (value.size() < prefix.size() || value.compare(0, prefix.size(), prefix) != 0) return {};
  return value.substr(prefix.size());
}

json health_json(const ServeContext& ctx) {
  const SchedulerStats s = ctx.scheduler->stats();
  return {{"status", "ok"},
          {"requests_active", s.active},
          {"requests_queued", s.queued},
          {"kv_free_tokens", s.kv_free_tokens},
          {"kv_total_tokens", s.kv_total_tokens},
          {"decode_steps", s.steps},
          {"generated_tokens", s.generated_tokens}};
}

json model_json(const ServeContext& ctx, size_t index) {
  return {
      {"id", ctx.model_names[index]},
      {"object", "model"},
      {"created", ctx.created},
      {"owned_by", index == 0 ? "llamaq" : "llamaq (LoRA adapter of " + ctx.model_names[0] + ")"}};
}

json tokenize_json(const ServeContext& ctx, std::string_view body) {
  const TokenizeRequest r = parse_tokenize_request(body);
  std::vector<int32_t> ids;
  try {
    ids = r.add_special ? ctx.tokenizer.encode_with_bos(r.content, /*parse_special=*/false)
                        : ctx.tokenizer.encode(r.content, /*parse_special=*/false);
  } catch (const Error& e) {
    bad_request("content", e.what());
  }
  json tokens = json::array();
  for (int32_t id : ids) {
    if (!r.with_pieces) {
      tokens.push_back(id);
      continue;
    }
    const int32_t one[1] = {id};
    tokens.push_back({{"id", id}, {"piece", ctx.tokenizer.decode(one, /*skip_special=*/false)}});
  }
  return {{"tokens", tokens}};
}

json detokenize_json(const ServeContext& ctx, std::string_view body) {
  const std::vector<int32_t> ids = parse_detokenize_request(body);
  const int32_t vocab = ctx.tokenizer.vocab_size();
  for (int32_t id : ids) {
    if (id >= vocab)
      bad_request("tokens", fmt::format("token id {} is outside the vocabulary of {}", id, vocab));
  }
  try {
    return {{"content", ctx.tokenizer.decode(ids, /*skip_special=*/false)}};
  } catch (const Error& e) {
    bad_request("tokens", e.what());
  }
}

}  // namespace

bool constant_time_equal(std::string_view a, std::string_view b) {
  // Every byte of the longer string is visited whatever the contents.
  const size_t n = std::max(a.size(), b.size());
  unsigned diff = a.size() == b.size() ? 0u : 1u;
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= unsigned(x ^ y);
  }
  return diff == 0;
}

HttpServer::HttpServer(HttpOptions options)
    : options_(std::move(options)), server_(std::make_unique<httplib::Server>()) {}

HttpServer::~HttpServer() {
  stop();
}

void HttpServer::log(const RequestLog& e) {
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - e.start).count();
  std::string line;
  if (options_.log_json) {
    line = dump(json{{"method", e.method},
                     {"path", e.path},
                     {"status", e.status},
                     {"remote", e.remote},
                     {"model", e.model},
                     {"prompt_tokens", e.prompt_tokens},
                     {"completion_tokens", e.completion_tokens},
                     {"seconds", seconds},
                     {"note", e.note}});
  } else {
    line = fmt::format("{} {} {} prompt={} completion={} {:.3f}s{}{}", e.method, e.path, e.status,
                       e.prompt_tokens, e.completion_tokens, seconds, e.note.empty() ? "" : " ",
                       e.note);
  }
  line += '\n';
  std::lock_guard lock(log_mutex_);
  std::cerr << line << std::flush;  // one write: no other stderr text can split the line
}

void HttpServer::add_routes() {
  using Handler = std::function<void(const ServeContext&, const httplib::Request&,
                                     httplib::Response&, RequestLog&)>;
  // Every route but /health: authentication, readiness, errors in OpenAI's shape, one log line.
  const auto route = [this](Handler handler) {
    return [this, handler](const httplib::Request& req, httplib::Response& res) {
      RequestLog entry{req.method, req.path, req.remote_addr};
      try {
        if (!options_.api_key.empty() &&
            !constant_time_equal(bearer_token(req), options_.api_key)) {
          throw ApiError(401, "invalid_request_error",
                         "Incorrect or missing API key (send the header 'Authorization: Bearer "
                         "KEY')",
                         "", "invalid_api_key");
        }
        const ServeContext* ctx = ctx_.load();
        if (!ctx) throw ApiError(503, "server_error", "The model is still loading", "", "loading");
        if (draining_)
          throw ApiError(503, "server_error", "The server is shutting down", "", "shutting_down");
        res.status = 200;
        entry.status = 200;
        handler(*ctx, req, res, entry);
      } catch (const ApiError& e) {
        send_error(res, e);
        entry.status = e.status();
        entry.note = e.what();
      } catch (const std::exception& e) {
        send_error(res, ApiError(500, "server_error", std::string("Internal error: ") + e.what()));
        entry.status = 500;
        entry.note = e.what();
      }
      if (entry.status != 0) {
        log(entry);
      } else {
        std::lock_guard lock(streams_mutex_);
        ++open_streams_;  // logged (and counted out) by the stream's end, below
      }
    };
  };
  const LogSink sink = [this](const RequestLog& e) {
    log(e);
    std::lock_guard lock(streams_mutex_);
    --open_streams_;
    streams_done_.notify_all();
  };
  const auto completion = [sink](Endpoint endpoint) {
    return [sink, endpoint](const ServeContext& ctx, const httplib::Request& req,
                            httplib::Response& res, RequestLog& entry) {
      handle_completion(ctx, endpoint, req, res, entry, sink);
    };
  };
  server_->Post("/v1/chat/completions", route(completion(Endpoint::Chat)));
  server_->Post("/v1/completions", route(completion(Endpoint::Completion)));
  server_->Get("/v1/models", route([](const ServeContext& ctx, const httplib::Request&,
                                      httplib::Response& res, RequestLog&) {
                 json data = json::array();
                 for (size_t i = 0; i < ctx.model_names.size(); ++i)
                   data.push_back(model_json(ctx, i));
                 res.set_content(dump({{"object", "list"}, {"data", data}}), "application/json");
               }));
  server_->Get("/v1/models/(.+)", route([](const ServeContext& ctx, const httplib::Request& req,
                                           httplib::Response& res, RequestLog&) {
                 const std::string name = req.matches[1];
                 for (size_t i = 0; i < ctx.model_names.size(); ++i) {
                   if (ctx.model_names[i] == name)
                     return res.set_content(dump(model_json(ctx, i)), "application/json");
                 }
                 throw ApiError(404, "invalid_request_error",
                                fmt::format("The model '{}' does not exist", name), "model",
                                "model_not_found");
               }));
  server_->Post("/tokenize", route([](const ServeContext& ctx, const httplib::Request& req,
                                      httplib::Response& res, RequestLog&) {
                  res.set_content(dump(tokenize_json(ctx, req.body)), "application/json");
                }));
  server_->Post("/detokenize", route([](const ServeContext& ctx, const httplib::Request& req,
                                        httplib::Response& res, RequestLog&) {
                  res.set_content(dump(detokenize_json(ctx, req.body)), "application/json");
                }));
  server_->Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    const ServeContext* ctx = ctx_.load();
    if (!ctx || draining_) {
      res.status = 503;
      res.set_content(dump({{"status", ctx ? "shutting down" : "loading"}}), "application/json");
      return;
    }
    res.set_content(dump(health_json(*ctx)), "application/json");
  });
  // Unknown paths, a body over the cap, and other errors httplib answers itself.
  server_->set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    const std::string message =
        res.status == 404   ? fmt::format("Unknown endpoint {} {}", req.method, req.path)
        : res.status == 413 ? fmt::format(
                                  "The request body is larger than the server's limit of {} "
                                  "bytes",
                                  options_.max_body_bytes)
                            : fmt::format("HTTP error {}", res.status);
    res.set_content(dump(error_json(ApiError(res.status, "invalid_request_error", message))),
                    "application/json");
    RequestLog entry{req.method, req.path, req.remote_addr};
    entry.status = res.status;
    entry.note = message;
    log(entry);
  });
}

void HttpServer::start() {
  server_->set_payload_max_length(options_.max_body_bytes);
  // httplib's default also sets SO_REUSEPORT, which would let a second server share a port that
  // is in use instead of failing; keep SO_REUSEADDR only (quick restarts).
  server_->set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  });
  server_->set_tcp_nodelay(true);  // stream chunks go out as they are written
  const size_t threads = size_t(options_.threads > 0 ? options_.threads : 96);
  server_->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  add_routes();
  if (options_.port == 0) {
    port_ = server_->bind_to_any_port(options_.host);
  } else {
    port_ = server_->bind_to_port(options_.host, options_.port) ? options_.port : -1;
  }
  if (port_ <= 0) {
    fail("serve: cannot listen on {}:{} (address in use, or not an address of this machine)",
         options_.host, options_.port);
  }
  // The socket listens from bind on: connections made before the thread runs wait in the backlog.
  // httplib's stop() does nothing until the loop runs, so wait for it (or for its failure).
  auto loop_ended = std::make_shared<std::atomic<bool>>(false);
  thread_ = std::thread([this, loop_ended] {
    server_->listen_after_bind();
    *loop_ended = true;
  });
  while (!server_->is_running() && !*loop_ended)
    std::this_thread::yield();
}

void HttpServer::set_ready(const ServeContext* ctx) {
  ctx_ = ctx;
}

void HttpServer::stop(double stream_grace_s) {
  if (!thread_.joinable()) return;
  {
    // Streams whose generation has ended are still writing their last events: let them finish.
    std::unique_lock lock(streams_mutex_);
    streams_done_.wait_for(lock, std::chrono::duration<double>(stream_grace_s),
                           [&] { return open_streams_ == 0; });
  }
  server_->stop();
  thread_.join();
}

}  // namespace llamaq::serve
