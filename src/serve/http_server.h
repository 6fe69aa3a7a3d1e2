// The HTTP side of `llamaq serve` on cpp-httplib: routes, API-key check, body-size cap, request
// log. It listens before the model is loaded (GET /health answers 503 until set_ready()).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "serve/serve_context.h"

namespace httplib {
class Server;
}

namespace llamaq::serve {

struct HttpOptions {
  std::string host = "127.0.0.1";
  int port = 8080;      // 0: any free port (see HttpServer::port())
  std::string api_key;  // empty: no authentication
  size_t max_body_bytes = 8 << 20;
  bool log_json = false;  // request log as JSON lines instead of text
  int threads = 0;        // HTTP worker threads; 0: max_batch + max_queue + 8
};

class HttpServer {
 public:
  explicit HttpServer(HttpOptions options);
  ~HttpServer();

  // Binds (throws llamaq::Error naming host:port when it cannot) and serves on a thread.
  void start();
  int port() const { return port_; }

  // The model is loaded: generation endpoints open. `ctx` must outlive the server.
  void set_ready(const ServeContext* ctx);
  // New requests get 503 from now on (shutdown has begun).
  void set_draining() { draining_ = true; }
  // Waits up to `stream_grace_s` for open streams to write their last events, then stops
  // listening and joins the serving thread.
  void stop(double stream_grace_s = 5);

 private:
  void add_routes();
  void log(const RequestLog& entry);

  HttpOptions options_;
  std::unique_ptr<httplib::Server> server_;
  std::atomic<const ServeContext*> ctx_{nullptr};
  std::atomic<bool> draining_{false};
  std::mutex log_mutex_;
  std::mutex streams_mutex_;
  std::condition_variable streams_done_;
  int open_streams_ = 0;
  std::thread thread_;
  int port_ = 0;
};

// Equal strings, in time that depends only on the lengths (API-key comparison).
bool constant_time_equal(std::string_view a, std::string_view b);

}  // namespace llamaq::serve
