#include "io/text_file.h"

#include <fstream>
#include <sstream>

#include "core/error.h"

namespace llamaq {

std::string read_text_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open", path.string());
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) fail("{}: read error", path.string());
  return text.str();
}

}  // namespace llamaq
