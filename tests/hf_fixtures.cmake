# HF transformers parity: a ctest fixture generates reference models and outputs with the pinned
# transformers (tests/fixtures/make_hf_fixtures.py) into ${TURBOESM_TEST_WORK_DIR}/hf; the parity
# tests (binary test_hf_parity, source tests/model/hf_parity.cpp) require it. Without
# TURBOESM_PYTHON the tests are still built and report themselves as skipped.
if(NOT TURBOESM_WITH_TORCH OR NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/model/hf_parity.cpp)
  return()
endif()

add_executable(test_hf_parity ${CMAKE_CURRENT_SOURCE_DIR}/model/hf_parity.cpp)
target_link_libraries(test_hf_parity PRIVATE turboesm GTest::gtest GTest::gtest_main)
target_include_directories(test_hf_parity PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
target_compile_definitions(test_hf_parity PRIVATE
  TURBOESM_TEST_DATA_DIR="${TURBOESM_TEST_DATA_DIR}"
  TURBOESM_TEST_WORK_DIR="${TURBOESM_TEST_WORK_DIR}"
  TURBOESM_BIN_DIR="${PROJECT_BINARY_DIR}/bin"
  TURBOESM_SOURCE_DIR="${PROJECT_SOURCE_DIR}"
  TURBOESM_PYTHON="${TURBOESM_PYTHON}")
gtest_discover_tests(test_hf_parity DISCOVERY_TIMEOUT 120
  PROPERTIES LABELS model FIXTURES_REQUIRED hf_fixtures)

if(TURBOESM_PYTHON)
  set(_make_model_arg)
  if(TARGET turboesm-make-model)
    set(_make_model_arg --make-model $<TARGET_FILE:turboesm-make-model>)
    add_dependencies(test_hf_parity turboesm-make-model)
  endif()
  add_test(NAME hf_fixtures
           COMMAND ${TURBOESM_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/fixtures/make_hf_fixtures.py
                   --out ${TURBOESM_TEST_WORK_DIR}/hf ${_make_model_arg})
  set_tests_properties(hf_fixtures PROPERTIES FIXTURES_SETUP hf_fixtures LABELS model TIMEOUT 600)
endif()
