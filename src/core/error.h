// Errors: every failure the user can cause (bad files, bad flags, bad requests) is reported by
// throwing llamaq::Error with a message that names the file or input and the problem.
#pragma once

#include <stdexcept>
#include <string>

namespace llamaq {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace llamaq

// fmt's compile-time format checks do not build under nvcc: .cu files throw Error directly.
#ifndef __CUDACC__
#include <fmt/format.h>

namespace llamaq {

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace llamaq
#endif  // __CUDACC__
