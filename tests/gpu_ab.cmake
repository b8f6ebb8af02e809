# tools/gpu_ab.sh's argument checks (the A/B tool for the GPU machine; its GPU steps run only
# there): bad commands and arguments give one clear line, never a build or a half-made library.
# Label: tools.
find_program(TURBOESM_BASH bash REQUIRED)
set(_ab ${TURBOESM_BASH} ${PROJECT_SOURCE_DIR}/tools/gpu_ab.sh)
set(_ab_env ${CMAKE_COMMAND} -E env TURBOESM_BUILD_DIR=${PROJECT_BINARY_DIR}
            TURBOESM_AB_DIR=${TURBOESM_TEST_WORK_DIR}/gpu_ab OUT=${TURBOESM_TEST_WORK_DIR}/gpu_ab_out
            TURBOESM_AB_WORK=${TURBOESM_TEST_WORK_DIR}/gpu_ab_work)
add_test(NAME tools.gpu_ab.no_command COMMAND ${_ab_env} ${_ab})
add_test(NAME tools.gpu_ab.unknown_command COMMAND ${_ab_env} ${_ab} bogus)
add_test(NAME tools.gpu_ab.lib_without_source COMMAND ${_ab_env} ${_ab} lib onlyname)
set_tests_properties(tools.gpu_ab.no_command tools.gpu_ab.unknown_command
                     tools.gpu_ab.lib_without_source PROPERTIES
                     PASS_REGULAR_EXPRESSION "^usage: tools/gpu_ab.sh lib NAME SOURCE" LABELS tools)
# `run` without a pack: it says what to carry instead of running anything.
add_test(NAME tools.gpu_ab.run_without_pack COMMAND ${_ab_env} ${_ab} run)
set_tests_properties(tools.gpu_ab.run_without_pack PROPERTIES
                     PASS_REGULAR_EXPRESSION "gpu_ab.sh run: no .*/pack \\(carry it\\)" LABELS tools)
if(TARGET turboesm_kernels)
  # A source that is neither a folder nor a revision (checked before any compilation).
  add_test(NAME tools.gpu_ab.lib_bad_source
           COMMAND ${_ab_env} ${_ab} lib x no-such-revision-or-folder)
  set_tests_properties(tools.gpu_ab.lib_bad_source PROPERTIES
                       PASS_REGULAR_EXPRESSION "is neither a directory nor a git revision"
                       LABELS tools)
endif()
# "new" is the tree's own library, which pack makes: lib refuses the name.
add_test(NAME tools.gpu_ab.lib_named_new COMMAND ${_ab_env} ${_ab} lib new HEAD)
set_tests_properties(tools.gpu_ab.lib_named_new PROPERTIES
                     PASS_REGULAR_EXPRESSION "NAME 'new' is the tree's library" LABELS tools)
