# The bad-input table (tests/programs/bad_inputs.tsv) run against the real programs in
# ${PROJECT_BINARY_DIR}/bin by tests/programs/run_bad_inputs.sh. Reported as skipped (exit 77)
# while any row is pending (a program or option that does not exist yet), never as passed.
# Label: programs.
if(NOT TURBOESM_WITH_TORCH OR NOT TURBOESM_BUILD_TOOLS)
  return()
endif()
find_program(TURBOESM_BASH bash REQUIRED)
set(_python python3)
if(TURBOESM_PYTHON)
  set(_python ${TURBOESM_PYTHON})
endif()
add_test(NAME programs.bad_inputs
         COMMAND ${CMAKE_COMMAND} -E env TURBOESM_PYTHON=${_python}
                 ${TURBOESM_BASH} ${CMAKE_CURRENT_SOURCE_DIR}/programs/run_bad_inputs.sh
                 --bin ${PROJECT_BINARY_DIR}/bin --work ${TURBOESM_TEST_WORK_DIR}/bad_inputs)
set_tests_properties(programs.bad_inputs PROPERTIES LABELS programs SKIP_RETURN_CODE 77
                     TIMEOUT 600)
