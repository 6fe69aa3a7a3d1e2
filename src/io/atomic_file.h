// Atomic output: data goes to a temporary file next to the target, is flushed to disk, then
// renamed over the target. A crash or an error leaves the old file (if any) untouched.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string_view>

namespace llamaq {

class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(std::filesystem::path target);
  ~AtomicFileWriter();  // removes the temporary file unless commit() succeeded
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  void write(std::span<const uint8_t> bytes);
  void write(std::string_view text);
  void commit();  // fsync + rename; throws llamaq::Error naming the file on failure

 private:
  std::filesystem::path target_;
  std::filesystem::path temp_;
  int fd_ = -1;
  bool committed_ = false;
};

// Convenience: the whole content at once.
void write_file_atomic(const std::filesystem::path& target, std::string_view content);

}  // namespace llamaq
