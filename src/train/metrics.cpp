// metrics.jsonl / metrics.csv writers (metrics.h).
#include "train/metrics.h"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "io/atomic_file.h"

namespace llamaq {
namespace {

std::string json_number(double value) {
  return std::isfinite(value) ? fmt::format("{}", value) : "null";
}

std::string csv_number(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  return fmt::format("{}", value);
}

// Lines of a file that end with '\n' (without it); a torn last line is left out. A missing file
// has none.
std::vector<std::string> complete_lines(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return {};
  std::ostringstream buffer;
  buffer << in.rdbuf();
  const std::string content = std::move(buffer).str();
  std::vector<std::string> lines;
  size_t begin = 0;
  for (size_t end; (end = content.find('\n', begin)) != std::string::npos; begin = end + 1) {
    lines.emplace_back(content.substr(begin, end - begin));
  }
  return lines;
}

std::optional<int64_t> jsonl_step(const std::string& line) {
  const nlohmann::json record = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (!record.is_object()) return std::nullopt;
  const auto step = record.find("step");
  if (step == record.end() || !step->is_number_integer()) return std::nullopt;
  return step->get<int64_t>();
}

std::optional<int64_t> csv_step(std::string_view line) {
  constexpr auto kColumns = 6;
  if (std::count(line.begin(), line.end(), ',') != kColumns - 1) return std::nullopt;
  const std::string_view field = line.substr(0, line.find(','));
  int64_t step = 0;
  const auto [end, error] = std::from_chars(field.data(), field.data() + field.size(), step);
  if (error != std::errc() || end != field.data() + field.size()) return std::nullopt;
  return step;
}

// Rewrites `path` (atomically) with `header` (if any) and the records of steps <= last_step.
template <typename StepOf>
void keep_records_up_to(const std::filesystem::path& path, int64_t last_step, bool has_header,
                        const std::string& header, StepOf step_of) {
  std::vector<std::string> lines = complete_lines(path);
  std::string kept = has_header ? header + "\n" : "";
  for (size_t i = has_header ? 1 : 0; i < lines.size(); ++i) {
    const std::optional<int64_t> step = step_of(lines[i]);
    if (step && *step <= last_step) kept += lines[i] + "\n";
  }
  write_file_atomic(path, kept);
}

}  // namespace

std::string metrics_jsonl_line(const StepMetrics& m) {
  std::string line =
      fmt::format(R"({{"step":{},"loss":{},"lr":{},"tokens_per_s":{})", m.step, json_number(m.loss),
                  json_number(m.lr), json_number(m.tokens_per_s));
  if (m.eval_loss) line += fmt::format(R"(,"eval_loss":{})", json_number(*m.eval_loss));
  if (m.grad_norm) line += fmt::format(R"(,"grad_norm":{})", json_number(*m.grad_norm));
  return line + "}";
}

std::string metrics_csv_line(const StepMetrics& m) {
  return fmt::format("{},{},{},{},{},{}", m.step, csv_number(m.loss), csv_number(m.lr),
                     csv_number(m.tokens_per_s), m.eval_loss ? csv_number(*m.eval_loss) : "",
                     m.grad_norm ? csv_number(*m.grad_norm) : "");
}

MetricsWriter::MetricsWriter(const std::filesystem::path& out_dir,
                             std::optional<int64_t> resume_step)
    : jsonl_path_(out_dir / kJsonlName), csv_path_(out_dir / kCsvName) {
  std::error_code error;
  std::filesystem::create_directories(out_dir, error);
  if (error) fail("cannot create output folder {}: {}", out_dir.string(), error.message());
  if (resume_step) {
    keep_records_up_to(jsonl_path_, *resume_step, false, "", jsonl_step);
    keep_records_up_to(csv_path_, *resume_step, true, kMetricsCsvHeader, csv_step);
  } else {
    write_file_atomic(jsonl_path_, "");
    write_file_atomic(csv_path_, std::string(kMetricsCsvHeader) + "\n");
  }
  jsonl_ = open_for_append(jsonl_path_);
  csv_ = open_for_append(csv_path_);
}

MetricsWriter::File MetricsWriter::open_for_append(const std::filesystem::path& path) {
  File file(std::fopen(path.c_str(), "ab"));
  if (!file) fail("cannot open {} for writing: {}", path.string(), std::strerror(errno));
  return file;
}

void MetricsWriter::append_line(std::FILE* file, const std::string& line,
                                const std::filesystem::path& path) {
  const std::string text = line + "\n";
  if (std::fwrite(text.data(), 1, text.size(), file) != text.size() || std::fflush(file) != 0) {
    fail("cannot write {}: {}", path.string(), std::strerror(errno));
  }
}

void MetricsWriter::write(const StepMetrics& metrics) {
  append_line(jsonl_.get(), metrics_jsonl_line(metrics), jsonl_path_);
  append_line(csv_.get(), metrics_csv_line(metrics), csv_path_);
}

}  // namespace llamaq
