// Learning-rate schedules with linear warmup, exactly as transformers' optimization.py computes
// them (get_constant_schedule_with_warmup, get_linear_schedule_with_warmup,
// get_cosine_schedule_with_warmup; specs §7.3): a multiplier of the base learning rate as a
// function of `step`, the number of optimizer steps already taken, so the first update uses
// multiplier(0) — 0 when there is warmup.
#pragma once

#include <cstdint>
#include <string_view>

namespace llamaq {

enum class LrScheduleKind { kConstant, kLinear, kCosine };

// "constant", "linear" or "cosine" (transformers' lr_scheduler_type names; "constant" means
// constant_with_warmup); throws llamaq::Error naming the accepted names otherwise.
LrScheduleKind parse_lr_schedule_kind(std::string_view name);
std::string_view lr_schedule_name(LrScheduleKind kind);

// transformers 5.x get_warmup_steps: a value >= 1 is a step count (truncated like Python's
// int()), a value in [0, 1) a fraction of the total, rounded up: ceil(total_steps * warmup).
// Throws for a negative or non-finite value.
int64_t resolve_warmup_steps(double warmup, int64_t total_steps);

class LrSchedule {
 public:
  // total_steps >= 1 and warmup_steps >= 0; num_cycles is the cosine's (0.5: one half wave
  // from 1 down to 0).
  LrSchedule(LrScheduleKind kind, int64_t warmup_steps, int64_t total_steps,
             double num_cycles = 0.5);

  // For step < warmup: step / max(1, warmup). After it:
  //   constant: 1
  //   linear:   max(0, (total - step) / max(1, total - warmup))
  //   cosine:   max(0, 0.5 * (1 + cos(pi * num_cycles * 2 * progress))),
  //             progress = (step - warmup) / max(1, total - warmup)
  // Steps past the total follow the same formulas, as in transformers.
  double multiplier(int64_t step) const;
  double learning_rate(double base_lr, int64_t step) const { return base_lr * multiplier(step); }

  LrScheduleKind kind() const { return kind_; }
  int64_t warmup_steps() const { return warmup_steps_; }
  int64_t total_steps() const { return total_steps_; }

 private:
  LrScheduleKind kind_;
  int64_t warmup_steps_;
  int64_t total_steps_;
  double num_cycles_;
};

}  // namespace llamaq
