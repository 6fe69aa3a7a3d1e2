// Learning-rate schedules against transformers' values (specs §7.3, VERIFIED-RUN figures).
#include <gtest/gtest.h>

#include "test_util.h"
#include "train/lr_schedule.h"

namespace llamaq::test {
namespace {

TEST(LrSchedule, CosineMatchesTransformersVerifiedValues) {
  // lr 2e-4, warmup 10, total 100, as run with transformers' get_cosine_schedule_with_warmup.
  const LrSchedule cosine(LrScheduleKind::kCosine, 10, 100);
  const double lr = 2e-4;
  EXPECT_EQ(cosine.learning_rate(lr, 0), 0.0);
  EXPECT_DOUBLE_EQ(cosine.learning_rate(lr, 1), 2e-05);
  EXPECT_DOUBLE_EQ(cosine.learning_rate(lr, 5), 1e-04);
  EXPECT_DOUBLE_EQ(cosine.learning_rate(lr, 10), 2e-04);
  EXPECT_DOUBLE_EQ(cosine.learning_rate(lr, 11), 1.999390827019096e-04);
  EXPECT_DOUBLE_EQ(cosine.learning_rate(lr, 50), 1.1736481776669306e-04);
  EXPECT_DOUBLE_EQ(cosine.learning_rate(lr, 99), 6.09172980904238e-08);
  EXPECT_EQ(cosine.learning_rate(lr, 100), 0.0);
}

TEST(LrSchedule, CosineShapeWithoutWarmup) {
  const LrSchedule cosine(LrScheduleKind::kCosine, 0, 100);
  EXPECT_EQ(cosine.multiplier(0), 1.0);
  EXPECT_NEAR(cosine.multiplier(50), 0.5, 1e-15);
  EXPECT_NEAR(cosine.multiplier(100), 0.0, 1e-15);
  EXPECT_GT(cosine.multiplier(25), cosine.multiplier(26));
  // Past the end the formula continues (clamped at 0), exactly as transformers does.
  EXPECT_NEAR(cosine.multiplier(150), 0.5, 1e-15);
}

TEST(LrSchedule, WarmupRampsLinearlyToOne) {
  for (const LrScheduleKind kind :
       {LrScheduleKind::kConstant, LrScheduleKind::kLinear, LrScheduleKind::kCosine}) {
    const LrSchedule schedule(kind, 4, 20);
    EXPECT_EQ(schedule.multiplier(0), 0.0);
    EXPECT_EQ(schedule.multiplier(1), 0.25);
    EXPECT_EQ(schedule.multiplier(3), 0.75);
    EXPECT_EQ(schedule.multiplier(4), 1.0);
  }
}

TEST(LrSchedule, LinearDecaysToZero) {
  const LrSchedule linear(LrScheduleKind::kLinear, 10, 110);
  EXPECT_EQ(linear.multiplier(10), 1.0);
  EXPECT_EQ(linear.multiplier(60), 0.5);
  EXPECT_EQ(linear.multiplier(109), 0.01);
  EXPECT_EQ(linear.multiplier(110), 0.0);
  EXPECT_EQ(linear.multiplier(200), 0.0);
}

TEST(LrSchedule, ConstantStaysAtOneAfterWarmup) {
  const LrSchedule constant(LrScheduleKind::kConstant, 0, 5);
  EXPECT_EQ(constant.multiplier(0), 1.0);
  EXPECT_EQ(constant.multiplier(1000), 1.0);
}

TEST(LrSchedule, WarmupLongerThanTrainingNeverDividesByZero) {
  const LrSchedule cosine(LrScheduleKind::kCosine, 10, 10);
  EXPECT_EQ(cosine.multiplier(9), 0.9);
  EXPECT_EQ(cosine.multiplier(10), 1.0);  // progress 0 / max(1, 0)
  const LrSchedule linear(LrScheduleKind::kLinear, 10, 5);
  EXPECT_EQ(linear.multiplier(10), 0.0);
}

TEST(LrSchedule, WarmupStepsFromCountOrFraction) {
  EXPECT_EQ(resolve_warmup_steps(0, 100), 0);
  EXPECT_EQ(resolve_warmup_steps(10, 100), 10);
  EXPECT_EQ(resolve_warmup_steps(2.9, 100), 2);     // int(2.9)
  EXPECT_EQ(resolve_warmup_steps(0.03, 1875), 57);  // ceil(56.25)
  EXPECT_EQ(resolve_warmup_steps(0.05, 100), 5);    // 0.05 * 100 == 5.0 in doubles
  EXPECT_EQ(resolve_warmup_steps(0.1, 7), 1);       // ceil(0.7)
  expect_error([] { resolve_warmup_steps(-1, 10); }, {"--warmup"});
  expect_error([] { resolve_warmup_steps(std::nan(""), 10); }, {"--warmup"});
}

TEST(LrSchedule, NamesAndInvalidArguments) {
  EXPECT_EQ(parse_lr_schedule_kind("cosine"), LrScheduleKind::kCosine);
  EXPECT_EQ(parse_lr_schedule_kind("linear"), LrScheduleKind::kLinear);
  EXPECT_EQ(parse_lr_schedule_kind("constant"), LrScheduleKind::kConstant);
  EXPECT_EQ(lr_schedule_name(LrScheduleKind::kCosine), "cosine");
  expect_error([] { parse_lr_schedule_kind("step"); },
               {"unknown learning-rate schedule \"step\"", "constant, linear or cosine"});
  expect_error([] { LrSchedule(LrScheduleKind::kLinear, 0, 0); }, {"at least 1 step"});
  expect_error([] { LrSchedule(LrScheduleKind::kLinear, -1, 5); }, {"must not be negative"});
}

}  // namespace
}  // namespace llamaq::test
