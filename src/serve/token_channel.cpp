#include "serve/token_channel.h"

namespace llamaq::serve {

bool TokenChannel::push(TokenEvent event) {
  {
    std::lock_guard lock(mutex_);
    events_.push_back(std::move(event));
  }
  ready_.notify_one();
  return !cancel_->load();
}

void TokenChannel::close(const BatchOutcome& outcome) {
  {
    std::lock_guard lock(mutex_);
    outcome_ = outcome;
  }
  ready_.notify_one();
}

TokenChannel::Wait TokenChannel::take(std::deque<TokenEvent>& out, Clock::time_point deadline) {
  std::unique_lock lock(mutex_);
  if (!ready_.wait_until(lock, deadline, [&] { return !events_.empty() || outcome_; })) {
    return Wait::TimedOut;
  }
  if (!events_.empty()) {
    for (TokenEvent& e : events_)
      out.push_back(std::move(e));
    events_.clear();
    return Wait::Events;
  }
  return Wait::Done;
}

}  // namespace llamaq::serve
