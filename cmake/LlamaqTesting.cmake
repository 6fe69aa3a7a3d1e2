# Test helpers shared by every tests/ folder.
include(GoogleTest)

set(LLAMAQ_TEST_DATA_DIR "${PROJECT_SOURCE_DIR}/tests/data")
set(LLAMAQ_FUZZ_SECONDS 20 CACHE STRING "Seconds each fuzz target runs under ctest in a fuzz build")

# llamaq_add_gtest(<name> SOURCES a.cpp ... LIBS lib ... [LABELS l ...])
# A GoogleTest executable whose cases are registered with CTest one by one.
function(llamaq_add_gtest name)
  cmake_parse_arguments(ARG "" "" "SOURCES;LIBS;LABELS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE ${ARG_LIBS} GTest::gtest GTest::gtest_main llamaq_warnings)
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR}/tests)
  target_compile_definitions(${name} PRIVATE
    LLAMAQ_TEST_DATA_DIR="${LLAMAQ_TEST_DATA_DIR}"
    LLAMAQ_BINARY_DIR="${PROJECT_BINARY_DIR}")
  gtest_discover_tests(${name} DISCOVERY_TIMEOUT 120 PROPERTIES LABELS "${ARG_LABELS}")
endfunction()

# llamaq_add_fuzz_target(<name> SOURCE f.cpp LIBS lib ...)
# The source defines LLVMFuzzerTestOneInput. In a fuzz build (clang, LLAMAQ_FUZZ=ON) it becomes a
# libFuzzer binary run by CTest for LLAMAQ_FUZZ_SECONDS over tests/fuzz/corpus/<name>/; in a
# normal build it is linked with a driver that replays that corpus, so every seed stays a test.
function(llamaq_add_fuzz_target name)
  cmake_parse_arguments(ARG "" "SOURCE" "LIBS" ${ARGN})
  set(corpus "${PROJECT_SOURCE_DIR}/tests/fuzz/corpus/${name}")
  if(LLAMAQ_FUZZ)
    add_executable(${name} ${ARG_SOURCE})
    target_link_libraries(${name} PRIVATE ${ARG_LIBS} llamaq_warnings)
    target_link_options(${name} PRIVATE -fsanitize=fuzzer)
    set(work "${PROJECT_BINARY_DIR}/fuzz-corpus/${name}")
    add_test(NAME ${name}
      COMMAND ${CMAKE_COMMAND} -E env ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1
        $<TARGET_FILE:${name}> -max_total_time=${LLAMAQ_FUZZ_SECONDS} -rss_limit_mb=2048
        -timeout=10 -artifact_prefix=${PROJECT_BINARY_DIR}/ ${work} ${corpus})
    set_tests_properties(${name} PROPERTIES LABELS fuzz
      FIXTURES_REQUIRED fuzz_dir_${name})
    add_test(NAME ${name}_corpus_dir COMMAND ${CMAKE_COMMAND} -E make_directory ${work})
    set_tests_properties(${name}_corpus_dir PROPERTIES FIXTURES_SETUP fuzz_dir_${name})
  else()
    add_executable(${name} ${ARG_SOURCE} ${PROJECT_SOURCE_DIR}/tests/fuzz/replay_main.cpp)
    target_link_libraries(${name} PRIVATE ${ARG_LIBS} llamaq_warnings)
    add_test(NAME replay_${name} COMMAND $<TARGET_FILE:${name}> ${corpus})
    set_tests_properties(replay_${name} PROPERTIES LABELS fuzz-replay)
  endif()
endfunction()
