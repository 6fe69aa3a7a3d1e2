// metrics.jsonl / metrics.csv content, flushing and truncation on resume.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "test_util.h"
#include "train/metrics.h"

namespace llamaq::test {
namespace {

StepMetrics metrics_for(int64_t step) {
  StepMetrics m;
  m.step = step;
  m.loss = 2.5 - 0.25 * double(step);
  m.lr = 2e-4;
  m.tokens_per_s = 1000.5;
  return m;
}

TEST(Metrics, LinesHaveTheSameColumnsInBothFormats) {
  StepMetrics m = metrics_for(3);
  EXPECT_EQ(metrics_jsonl_line(m), R"({"step":3,"loss":1.75,"lr":0.0002,"tokens_per_s":1000.5})");
  EXPECT_EQ(metrics_csv_line(m), "3,1.75,0.0002,1000.5,,");
  m.eval_loss = 1.9;
  m.grad_norm = 0.8421;
  EXPECT_EQ(metrics_jsonl_line(m),
            R"({"step":3,"loss":1.75,"lr":0.0002,"tokens_per_s":1000.5,"eval_loss":1.9,)"
            R"("grad_norm":0.8421})");
  EXPECT_EQ(metrics_csv_line(m), "3,1.75,0.0002,1000.5,1.9,0.8421");
  m.lr = 1.999390827019096e-04;
  EXPECT_NE(metrics_jsonl_line(m).find(R"("lr":0.0001999390827019096)"), std::string::npos);
}

TEST(Metrics, NonFiniteValuesStayParseable) {
  StepMetrics m = metrics_for(1);
  m.loss = std::numeric_limits<double>::quiet_NaN();
  m.grad_norm = std::numeric_limits<double>::infinity();
  EXPECT_EQ(metrics_jsonl_line(m),
            R"({"step":1,"loss":null,"lr":0.0002,"tokens_per_s":1000.5,"grad_norm":null})");
  EXPECT_EQ(metrics_csv_line(m), "1,nan,0.0002,1000.5,,inf");
}

TEST(Metrics, EachStepIsOnDiskAsSoonAsItIsWritten) {
  TempDir dir;
  MetricsWriter writer(dir / "out");
  EXPECT_EQ(read_bytes(dir / "out" / "metrics.csv"), std::string(kMetricsCsvHeader) + "\n");
  EXPECT_EQ(read_bytes(dir / "out" / "metrics.jsonl"), "");
  writer.write(metrics_for(1));
  StepMetrics second = metrics_for(2);
  second.eval_loss = 2.0;
  writer.write(second);
  // Read while the writer is still open: nothing is held in a buffer.
  EXPECT_EQ(read_bytes(writer.jsonl_path()),
            metrics_jsonl_line(metrics_for(1)) + "\n" + metrics_jsonl_line(second) + "\n");
  EXPECT_EQ(read_bytes(writer.csv_path()),
            std::string(kMetricsCsvHeader) + "\n1,2.25,0.0002,1000.5,,\n2,2,0.0002,1000.5,2,\n");
}

TEST(Metrics, FreshRunReplacesOldFiles) {
  TempDir dir;
  {
    MetricsWriter writer(dir.path());
    writer.write(metrics_for(1));
  }
  MetricsWriter writer(dir.path());
  EXPECT_EQ(read_bytes(writer.jsonl_path()), "");
  EXPECT_EQ(read_bytes(writer.csv_path()), std::string(kMetricsCsvHeader) + "\n");
}

TEST(Metrics, ResumeDropsStepsAfterTheCheckpointAndATornLastLine) {
  TempDir dir;
  {
    MetricsWriter writer(dir.path());
    for (int64_t step = 1; step <= 5; ++step)
      writer.write(metrics_for(step));
  }
  // A crash in the middle of writing step 6.
  write_bytes(dir / "metrics.jsonl", read_bytes(dir / "metrics.jsonl") + R"({"step":6,"loss":1.)");
  write_bytes(dir / "metrics.csv", read_bytes(dir / "metrics.csv") + "6,1.");

  MetricsWriter resumed(dir.path(), /*resume_step=*/3);
  std::string jsonl, csv = std::string(kMetricsCsvHeader) + "\n";
  for (int64_t step = 1; step <= 3; ++step) {
    jsonl += metrics_jsonl_line(metrics_for(step)) + "\n";
    csv += metrics_csv_line(metrics_for(step)) + "\n";
  }
  EXPECT_EQ(read_bytes(resumed.jsonl_path()), jsonl);
  EXPECT_EQ(read_bytes(resumed.csv_path()), csv);
  resumed.write(metrics_for(4));
  EXPECT_EQ(read_bytes(resumed.jsonl_path()), jsonl + metrics_jsonl_line(metrics_for(4)) + "\n");
  EXPECT_EQ(read_bytes(resumed.csv_path()), csv + metrics_csv_line(metrics_for(4)) + "\n");
}

TEST(Metrics, ResumeWithoutEarlierFilesStartsThem) {
  TempDir dir;
  MetricsWriter writer(dir / "new", /*resume_step=*/10);
  writer.write(metrics_for(11));
  EXPECT_EQ(read_bytes(writer.csv_path()),
            std::string(kMetricsCsvHeader) + "\n" + metrics_csv_line(metrics_for(11)) + "\n");
}

TEST(Metrics, UnwritableFolderIsAnError) {
  TempDir dir;
  write_bytes(dir / "file", "x");
  expect_error([&] { MetricsWriter(dir / "file" / "out"); }, {"cannot create output folder"});
}

}  // namespace
}  // namespace llamaq::test
