// Reading a whole small text file (configs, indexes, JSON), failing with a message naming it.
#pragma once

#include <filesystem>
#include <string>

namespace llamaq {

std::string read_text_file(const std::filesystem::path& path);

}  // namespace llamaq
