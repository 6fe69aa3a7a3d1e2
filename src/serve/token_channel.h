// The hand-over between the scheduler thread (which produces tokens) and the HTTP thread that
// answers the request (which consumes them). Thread-safe; the scheduler never blocks on it.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>

#include "runtime/batch_scheduler.h"

namespace llamaq::serve {

class TokenChannel {
 public:
  using Clock = std::chrono::steady_clock;

  TokenChannel() : cancel_(std::make_shared<std::atomic<bool>>(false)) {}

  // Scheduler side. push() returns false once the consumer has cancelled.
  bool push(TokenEvent event);
  void close(const BatchOutcome& outcome);

  // Consumer side: waits until there are events or the generation is over, or until `deadline`.
  // Moves the pending events into `out`; returns the outcome once everything has been taken.
  enum class Wait { Events, Done, TimedOut };
  Wait take(std::deque<TokenEvent>& out, Clock::time_point deadline);
  const BatchOutcome& outcome() const { return *outcome_; }

  void cancel() { cancel_->store(true); }
  const std::shared_ptr<std::atomic<bool>>& cancel_flag() const { return cancel_; }

 private:
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<TokenEvent> events_;
  std::optional<BatchOutcome> outcome_;
  std::shared_ptr<std::atomic<bool>> cancel_;
};

}  // namespace llamaq::serve
