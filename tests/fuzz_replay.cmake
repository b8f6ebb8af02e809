# Replays every fuzz target's seed corpus and saved crashes (tests/fuzz/corpus/<t>/,
# tests/fuzz/regressions/<t>/) with the normal compiler on each ctest run: a fixed crash that
# comes back fails CI even where clang/libFuzzer are absent. In the sanitizer build
# (tools/sanitize.sh) the replays run under ASan/UBSan. Label: fuzz.
# Included from tests/CMakeLists.txt (every tests/*.cmake is).
file(GLOB _fuzz_replay_sources CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/fuzz_*.cpp)
foreach(_src IN LISTS _fuzz_replay_sources)
  get_filename_component(_name ${_src} NAME_WE)
  set(_corpus ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/corpus/${_name})
  set(_regress ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/regressions/${_name})
  add_executable(replay_${_name} ${_src} ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/replay_main.cpp)
  target_link_libraries(replay_${_name} PRIVATE turboesm_io)
  target_include_directories(replay_${_name} PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/fuzz)
  set(_args ${_corpus})
  if(EXISTS ${_regress})
    list(APPEND _args ${_regress})
  endif()
  add_test(NAME fuzz_replay.${_name} COMMAND replay_${_name} ${_args})
  set_tests_properties(fuzz_replay.${_name} PROPERTIES LABELS fuzz TIMEOUT 120)
endforeach()
