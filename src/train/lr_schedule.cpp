// Learning-rate schedules (lr_schedule.h). Each formula follows transformers' Python expression
// term by term, in double precision, so the values match it bit for bit.
#include "train/lr_schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "core/error.h"

namespace llamaq {

LrScheduleKind parse_lr_schedule_kind(std::string_view name) {
  if (name == "constant") return LrScheduleKind::kConstant;
  if (name == "linear") return LrScheduleKind::kLinear;
  if (name == "cosine") return LrScheduleKind::kCosine;
  fail("unknown learning-rate schedule \"{}\" (use constant, linear or cosine)", name);
}

std::string_view lr_schedule_name(LrScheduleKind kind) {
  switch (kind) {
    case LrScheduleKind::kConstant:
      return "constant";
    case LrScheduleKind::kLinear:
      return "linear";
    case LrScheduleKind::kCosine:
      return "cosine";
  }
  return "unknown";
}

int64_t resolve_warmup_steps(double warmup, int64_t total_steps) {
  if (!std::isfinite(warmup) || warmup < 0) {
    fail("--warmup must be a step count >= 1 or a fraction in [0, 1), got {}", warmup);
  }
  if (warmup >= 1) return int64_t(warmup);
  return int64_t(std::ceil(double(total_steps) * warmup));
}

LrSchedule::LrSchedule(LrScheduleKind kind, int64_t warmup_steps, int64_t total_steps,
                       double num_cycles)
    : kind_(kind), warmup_steps_(warmup_steps), total_steps_(total_steps), num_cycles_(num_cycles) {
  if (total_steps < 1)
    fail("the learning-rate schedule needs at least 1 step, got {}", total_steps);
  if (warmup_steps < 0) fail("warmup steps must not be negative, got {}", warmup_steps);
  if (!std::isfinite(num_cycles)) fail("cosine cycles must be finite, got {}", num_cycles);
}

double LrSchedule::multiplier(int64_t step) const {
  if (step < warmup_steps_) {
    return double(step) / double(std::max<int64_t>(1, warmup_steps_));
  }
  const double decay_steps = double(std::max<int64_t>(1, total_steps_ - warmup_steps_));
  switch (kind_) {
    case LrScheduleKind::kConstant:
      return 1.0;
    case LrScheduleKind::kLinear:
      return std::max(0.0, double(total_steps_ - step) / decay_steps);
    case LrScheduleKind::kCosine: {
      const double progress = double(step - warmup_steps_) / decay_steps;
      return std::max(0.0, 0.5 * (1.0 + std::cos(std::numbers::pi * num_cycles_ * 2.0 * progress)));
    }
  }
  return 1.0;
}

}  // namespace llamaq
