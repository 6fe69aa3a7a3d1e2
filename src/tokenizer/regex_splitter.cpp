// PCRE2 compilation and matching for RegexSplitter. Matching state (match data, match context,
// JIT stack) is per thread, so one compiled tokenizer can encode from many threads at once.
#include "tokenizer/regex_splitter.h"

#include <pcre2.h>

#include <algorithm>
#include <array>
#include <cstdint>

#include "core/error.h"
#include "tokenizer/regex_dialect.h"

namespace llamaq {
namespace {

constexpr uint32_t kMatchLimit = 10'000'000;           // PCRE2's default
constexpr uint32_t kDefaultHeapLimitKib = 20 * 1024;   // PCRE2's default
constexpr uint32_t kRaisedHeapLimitKib = 1024 * 1024;  // 1 GiB for the interpreter's retry
constexpr PCRE2_SIZE kJitStackMax = 16 * 1024 * 1024;

std::string pcre2_message(int code) {
  std::array<PCRE2_UCHAR, 256> buffer{};
  if (pcre2_get_error_message(code, buffer.data(), buffer.size()) < 0) {
    return "PCRE2 error " + std::to_string(code);
  }
  return std::string(reinterpret_cast<const char*>(buffer.data()));
}

struct MatchResources {
  pcre2_match_data* data = pcre2_match_data_create(1, nullptr);
  pcre2_match_context* context = pcre2_match_context_create(nullptr);
  pcre2_jit_stack* jit_stack = pcre2_jit_stack_create(32 * 1024, kJitStackMax, nullptr);

  MatchResources() {
    if (!data || !context) fail("out of memory creating PCRE2 match data");
    if (jit_stack) pcre2_jit_stack_assign(context, nullptr, jit_stack);
  }
  ~MatchResources() {
    pcre2_jit_stack_free(jit_stack);
    pcre2_match_context_free(context);
    pcre2_match_data_free(data);
  }
  MatchResources(const MatchResources&) = delete;
  MatchResources& operator=(const MatchResources&) = delete;
};

MatchResources& thread_match_resources() {
  thread_local MatchResources resources;
  return resources;
}

}  // namespace

struct RegexSplitter::Compiled {
  pcre2_code* code = nullptr;
  ~Compiled() { pcre2_code_free(code); }
};

RegexSplitter::RegexSplitter(std::string_view pattern, std::string_view source)
    : compiled_(std::make_unique<Compiled>()), pattern_(pattern), source_(source) {
  const std::string translated = translate_oniguruma_pattern(pattern, source);
  pcre2_compile_context* context = pcre2_compile_context_create(nullptr);
  if (!context) fail("out of memory creating a PCRE2 compile context");
  pcre2_set_newline(context, PCRE2_NEWLINE_LF);
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  const uint32_t options = PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE | PCRE2_NEVER_BACKSLASH_C;
  compiled_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()),
                                  translated.size(), options, &error_code, &error_offset, context);
  pcre2_compile_context_free(context);
  if (!compiled_->code) {
    fail("{}: the Split regex does not compile (at offset {}{}): {}", source, error_offset,
         translated == pattern ? "" : " of its PCRE2 translation", pcre2_message(error_code));
  }
  // JIT is an optimisation only: on platforms or builds without it, the interpreter matches the
  // same.
  jit_compiled_ = pcre2_jit_compile(compiled_->code, PCRE2_JIT_COMPLETE) == 0;
}

RegexSplitter::~RegexSplitter() = default;
RegexSplitter::RegexSplitter(RegexSplitter&&) noexcept = default;
RegexSplitter& RegexSplitter::operator=(RegexSplitter&&) noexcept = default;

bool RegexSplitter::find(std::string_view text, size_t from, size_t& match_begin,
                         size_t& match_end) const {
  MatchResources& resources = thread_match_resources();
  const auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  const auto run = [&](uint32_t extra_options) {
    return pcre2_match(compiled_->code, subject, text.size(), from,
                       PCRE2_NO_UTF_CHECK | extra_options, resources.data, resources.context);
  };
  const auto raise_limits = [&] {
    // Legitimate long inputs (e.g. a megabyte of whitespace) may need more steps than PCRE2's
    // defaults; allow work proportional to the remaining text, once.
    const uint64_t raised = uint64_t(kMatchLimit) + 1000 * uint64_t(text.size() - from);
    pcre2_set_match_limit(resources.context, uint32_t(std::min<uint64_t>(raised, UINT32_MAX)));
    pcre2_set_heap_limit(resources.context, kRaisedHeapLimitKib);
  };
  pcre2_set_match_limit(resources.context, kMatchLimit);
  pcre2_set_heap_limit(resources.context, kDefaultHeapLimitKib);
  int rc = run(0);
  if (rc == PCRE2_ERROR_MATCHLIMIT || rc == PCRE2_ERROR_HEAPLIMIT || rc == PCRE2_ERROR_DEPTHLIMIT) {
    raise_limits();
    rc = run(0);
  }
  if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {  // the interpreter keeps its backtracking on the heap
    raise_limits();
    rc = run(PCRE2_NO_JIT);
  }
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc < 0) {
    fail("{}: matching the Split regex failed at byte offset {} of a {}-byte text: {}", source_,
         from, text.size(), pcre2_message(rc));
  }
  const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(resources.data);
  match_begin = ovector[0];
  match_end = ovector[1];
  if (match_begin < from || match_end < match_begin || match_end > text.size()) {
    fail("{}: the Split regex reported a match outside the searched text (\\K in a lookaround?)",
         source_);
  }
  return true;
}

}  // namespace llamaq
