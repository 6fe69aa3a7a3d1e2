// Training metrics files for plotting and monitoring: OUT/metrics.jsonl (one JSON object per
// optimizer step) and OUT/metrics.csv (a header, then one row per step, the same columns).
//
//   metrics.jsonl: {"step":12,"loss":1.734,"lr":0.0002,"tokens_per_s":5321.5,"eval_loss":1.9,
//                   "grad_norm":0.84}        (eval_loss and grad_norm only when given)
//   metrics.csv:   step,loss,lr,tokens_per_s,eval_loss,grad_norm
//                  12,1.734,0.0002,5321.5,1.9,0.84        (empty cells when not given)
//
// Numbers are written in their shortest round-trip form. A non-finite value (a diverged loss) is
// null in JSON (which has no NaN) and nan/inf/-inf in the CSV. Each record is written and
// flushed to the OS at once, so a crash of the process loses at most the record being written.
// On resume, records of steps after the resumed step and a torn last line (no newline) are
// removed first, with an atomic rewrite, so the files never hold a step twice.
#pragma once

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

namespace llamaq {

struct StepMetrics {
  int64_t step = 0;  // optimizer steps done (1 after the first update)
  double loss = 0;
  double lr = 0;  // the learning rate the step used
  double tokens_per_s = 0;
  std::optional<double> eval_loss;
  std::optional<double> grad_norm;  // before clipping
};

// The two record lines, without the newline (exposed for tests and logs).
std::string metrics_jsonl_line(const StepMetrics& metrics);
std::string metrics_csv_line(const StepMetrics& metrics);
inline constexpr const char* kMetricsCsvHeader = "step,loss,lr,tokens_per_s,eval_loss,grad_norm";

class MetricsWriter {
 public:
  static constexpr const char* kJsonlName = "metrics.jsonl";
  static constexpr const char* kCsvName = "metrics.csv";

  // Creates out_dir when needed. Without resume_step the files start empty (the CSV with its
  // header); with it, records of steps <= *resume_step already there are kept and new ones are
  // appended after them. Throws llamaq::Error naming the file on I/O failure.
  explicit MetricsWriter(const std::filesystem::path& out_dir,
                         std::optional<int64_t> resume_step = std::nullopt);

  // Appends one record to both files and flushes them.
  void write(const StepMetrics& metrics);

  const std::filesystem::path& jsonl_path() const { return jsonl_path_; }
  const std::filesystem::path& csv_path() const { return csv_path_; }

 private:
  struct FileCloser {
    void operator()(std::FILE* file) const { std::fclose(file); }
  };
  using File = std::unique_ptr<std::FILE, FileCloser>;

  static File open_for_append(const std::filesystem::path& path);
  static void append_line(std::FILE* file, const std::string& line,
                          const std::filesystem::path& path);

  std::filesystem::path jsonl_path_;
  std::filesystem::path csv_path_;
  File jsonl_;
  File csv_;
};

}  // namespace llamaq
