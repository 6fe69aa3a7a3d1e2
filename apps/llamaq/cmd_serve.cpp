// llamaq serve: an OpenAI-compatible HTTP server with continuous batching (src/serve). Listens
// first (GET /health answers 503 while loading), loads the base model and each --lora adapter,
// then serves until SIGTERM or SIGINT, when it stops taking requests, lets in-flight ones finish
// for --drain-seconds (then cancels them with an error) and exits with status 0.
#include <signal.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <thread>

#include "cli_common.h"
#include "commands.h"
#include "core/error.h"
#include "runtime/batch_scheduler.h"
#include "serve/http_server.h"

namespace llamaq::cli {
namespace {

struct ServeCliOptions {
  ModelOptions model;
  std::string model_name;         // default: the model folder's name
  std::vector<std::string> lora;  // NAME=DIR
  serve::HttpOptions http;
  int max_batch = 8;
  int max_queue = 64;
  int64_t ctx = 4096;
  int64_t kv_cache_tokens = 0;  // 0: ctx x max_batch
  int64_t prefill_chunk = 512;
  double timeout_s = 600;
  double drain_seconds = 10;
  size_t max_body_mb = 8;
};

struct Adapter {
  std::string name;
  std::string dir;
};

std::vector<Adapter> parse_adapters(const std::vector<std::string>& specs,
                                    const std::string& base) {
  std::vector<Adapter> adapters;
  for (const std::string& spec : specs) {
    const size_t eq = spec.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size()) {
      fail(
          "--lora {}: expected NAME=DIR (the name requests use as \"model\", and the PEFT adapter "
          "folder)",
          spec);
    }
    Adapter a{spec.substr(0, eq), spec.substr(eq + 1)};
    if (a.name == base) fail("--lora {}: the name '{}' is the base model's name", spec, a.name);
    for (const Adapter& other : adapters) {
      if (other.name == a.name) fail("--lora {}: the name '{}' is given twice", spec, a.name);
    }
    adapters.push_back(std::move(a));
  }
  return adapters;
}

// SIGINT/SIGTERM, received by a thread of their own (blocked everywhere else).
class ShutdownSignal {
 public:
  ShutdownSignal() {
    sigemptyset(&set_);
    sigaddset(&set_, SIGINT);
    sigaddset(&set_, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set_, nullptr);  // inherited by every thread started later
    signal(SIGPIPE, SIG_IGN);                    // a client that hangs up is a failed write
    thread_ = std::thread([this] {
      int received = 0;
      sigwait(&set_, &received);
      {
        std::lock_guard lock(mutex_);
        signal_ = received;
      }
      if (!ready_) {
        log_line(fmt::format("serve: {} while loading; exiting", strsignal(received)));
        std::_Exit(0);
      }
      cv_.notify_all();
    });
    thread_.detach();
  }
  void set_ready() { ready_ = true; }
  int wait() {
    std::unique_lock lock(mutex_);
    cv_.wait(lock, [&] { return signal_ != 0; });
    return signal_;
  }

 private:
  sigset_t set_;
  std::mutex mutex_;
  std::condition_variable cv_;
  int signal_ = 0;
  std::atomic<bool> ready_{false};
  std::thread thread_;
};

void run(ServeCliOptions o) {
  if (o.model_name.empty()) {
    o.model_name = std::filesystem::path(o.model.model_dir).lexically_normal().filename().string();
    if (o.model_name.empty())
      o.model_name = std::filesystem::path(o.model.model_dir).parent_path().filename().string();
  }
  const std::vector<Adapter> adapters = parse_adapters(o.lora, o.model_name);
  ShutdownSignal shutdown;
  o.http.max_body_bytes = o.max_body_mb << 20;
  if (o.http.threads == 0) o.http.threads = o.max_batch + o.max_queue + 16;
  serve::HttpServer http(o.http);
  http.start();
  log_line(fmt::format("serve: listening on http://{}:{} (loading the model)", o.http.host,
                       http.port()));

  Engine engine = load_engine(o.model);
  std::vector<LoadedModel> adapter_models;
  std::vector<LlamaModel*> models = {engine.loaded.model.get()};
  for (const Adapter& a : adapters) {
    LoadOptions load = load_options(o.model);
    load.lora_dir = a.dir;
    log_line(fmt::format("serve: loading adapter '{}' from {}", a.name, a.dir));
    adapter_models.push_back(load_model(o.model.model_dir, *engine.backend, log_line, load));
    models.push_back(adapter_models.back().model.get());
  }
  serve::ServeContext ctx(load_tokenizer(o.model.model_dir));
  ctx.model_names.push_back(o.model_name);
  for (const Adapter& a : adapters)
    ctx.model_names.push_back(a.name);
  ctx.stop_ids = ctx.tokenizer.stop_ids(engine.loaded.eos_token_ids());
  ctx.context_tokens = std::min(o.ctx, engine.loaded.config.max_position_embeddings);
  ctx.timeout_s = o.timeout_s;
  ctx.created = std::chrono::duration_cast<std::chrono::seconds>(
                    std::chrono::system_clock::now().time_since_epoch())
                    .count();

  SchedulerOptions sched;
  sched.max_batch = o.max_batch;
  sched.max_queue = o.max_queue;
  sched.context_tokens = ctx.context_tokens;
  sched.prefill_tokens = o.prefill_chunk;
  const int64_t kv_tokens =
      o.kv_cache_tokens > 0 ? o.kv_cache_tokens : ctx.context_tokens * o.max_batch;
  KvCache cache(*engine.backend, engine.loaded.config, kv_tokens, sched.kv_block_size);
  BatchScheduler scheduler(models, cache, sched);
  ctx.scheduler = &scheduler;
  http.set_ready(&ctx);
  shutdown.set_ready();
  log_line(fmt::format(
      "serve: ready: model '{}'{}, context {} tokens, batch {}, queue {}, KV cache "
      "{} tokens, on http://{}:{}",
      o.model_name, adapters.empty() ? "" : fmt::format(" + {} adapters", adapters.size()),
      ctx.context_tokens, o.max_batch, o.max_queue, kv_tokens, o.http.host, http.port()));

  const int sig = shutdown.wait();
  log_line(fmt::format("serve: {}: no new requests; finishing in-flight ones (up to {} s)",
                       strsignal(sig), o.drain_seconds));
  http.set_draining();
  scheduler.drain(o.drain_seconds);
  http.stop();
  scheduler.stop();
  log_line("serve: stopped");
}

}  // namespace

void register_serve(CLI::App& app) {
  auto o = std::make_shared<ServeCliOptions>();
  CLI::App* cmd =
      app.add_subcommand("serve", "OpenAI-compatible HTTP server with continuous batching");
  add_model_options(*cmd, o->model);
  cmd->remove_option(cmd->get_option("--lora"));
  cmd->add_option("--lora", o->lora,
                  "NAME=DIR: serve the PEFT adapter in DIR as model NAME (repeatable)");
  cmd->add_option("--model-name", o->model_name,
                  "The base model's name in the API (default: the folder name)");
  cmd->add_option("--host", o->http.host, "Address to listen on")->capture_default_str();
  cmd->add_option("--port", o->http.port, "Port (0: any free port, printed on stderr)")
      ->check(CLI::Range(0, 65535))
      ->capture_default_str();
  cmd->add_option("--api-key", o->http.api_key, "Require 'Authorization: Bearer KEY'")
      ->envname("LLAMAQ_API_KEY");
  cmd->add_option("--max-batch", o->max_batch, "Sequences decoded together")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  cmd->add_option("--max-queue", o->max_queue, "Requests waiting for a slot before 503")
      ->check(CLI::Range(0, 100000))
      ->capture_default_str();
  cmd->add_option("-c,--ctx", o->ctx, "Context per request in tokens (prompt + completion)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--kv-cache-tokens", o->kv_cache_tokens,
                  "KV cache size in tokens (default ctx x max-batch)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--prefill-chunk", o->prefill_chunk, "Prompt tokens processed per step")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--timeout", o->timeout_s, "Longest a request may take, in seconds")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--drain-seconds", o->drain_seconds,
                  "On SIGTERM, time in-flight requests get to finish")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--max-body-mb", o->max_body_mb, "Largest request body in MiB")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  cmd->add_option("--http-threads", o->http.threads,
                  "HTTP worker threads (default max-batch + max-queue + 16)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_flag("--log-json", o->http.log_json, "Request log as JSON lines");
  cmd->callback([o] { run(*o); });
}

}  // namespace llamaq::cli
